/* Decoded Vorbis codebooks, shared between streams whose setup headers are the same bytes.
 *
 * Opening an Ogg Vorbis stream decodes its setup header's codebooks into lookup tables
 * (vorbis_book_init_decode: building and sorting every codeword), about a tenth of
 * decoding a 5 s clip. Files from one encoder at one setting carry the same setup header
 * (all 2000 ESC-50 clips carry one), and the tables depend on nothing but those bytes and
 * are only read while decoding, so a process keeps the tables of the last few headers it
 * saw and later streams with an identical header (compared byte for byte, not by hash
 * alone) use them instead of building their own.
 *
 * Entries are reference counted: the cache holds one reference, each stream using the
 * books another (info.c releases it in vorbis_info_clear). A full cache replaces an entry
 * no stream is using; when every entry is in use the new books stay the stream's own.
 * One mutex guards the table and the counts: readers decode on several threads at once.
 * It is held across fork() (pthread_atfork), so a child never inherits it locked by a
 * thread that does not exist there.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "book_cache.h"

#define CACHE_ENTRIES 8

struct book_cache_entry {
  uint64_t hash;
  long bytes;
  unsigned char *setup; /* the setup header packet, the key */
  codebook *books;
  int count;
  int refs;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static book_cache_entry *cache[CACHE_ENTRIES];
static int next_victim;
static long hit_count, stored_count;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void lock_for_fork(void) { pthread_mutex_lock(&cache_lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&cache_lock); }
static void register_atfork(void) { pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork); }

static void lock_cache(void) {
  pthread_once(&atfork_once, register_atfork);
  pthread_mutex_lock(&cache_lock);
}

static uint64_t fnv1a(const unsigned char *p, long n) {
  uint64_t h = 1469598103934665603ULL;
  for (long i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

static void entry_free(book_cache_entry *e) {
  for (int i = 0; i < e->count; i++) vorbis_book_clear(e->books + i);
  free(e->books);
  free(e->setup);
  free(e);
}

/* With the lock held; returns the entry to free once unlocked, or NULL. */
static book_cache_entry *drop_reference(book_cache_entry *e) {
  return --e->refs == 0 ? e : NULL;
}

static book_cache_entry *lookup(uint64_t hash, const unsigned char *setup, long bytes, int count) {
  for (int i = 0; i < CACHE_ENTRIES; i++) {
    book_cache_entry *e = cache[i];
    if (e && e->hash == hash && e->bytes == bytes && e->count == count && memcmp(e->setup, setup, (size_t)bytes) == 0)
      return e;
  }
  return NULL;
}

book_cache_entry *book_cache_find(const unsigned char *setup, long bytes, int count) {
  if (!setup || bytes <= 0) return NULL;
  uint64_t hash = fnv1a(setup, bytes);
  lock_cache();
  book_cache_entry *e = lookup(hash, setup, bytes, count);
  if (e) {
    e->refs++;
    hit_count++;
  }
  pthread_mutex_unlock(&cache_lock);
  return e;
}

book_cache_entry *book_cache_offer(const unsigned char *setup, long bytes, codebook *books, int count) {
  if (!setup || bytes <= 0 || !books || count <= 0) return NULL;
  book_cache_entry *e = calloc(1, sizeof(*e));
  unsigned char *key = malloc((size_t)bytes);
  if (!e || !key) {
    free(e);
    free(key);
    return NULL;
  }
  memcpy(key, setup, (size_t)bytes);
  *e = (book_cache_entry){fnv1a(setup, bytes), bytes, key, books, count, 2}; /* the cache's and the caller's */

  book_cache_entry *evicted = NULL;
  int slot = -1;
  lock_cache();
  if (!lookup(e->hash, setup, bytes, count)) { /* another thread may have offered the same header */
    for (int i = 0; i < CACHE_ENTRIES && slot < 0; i++)
      if (!cache[i]) slot = i;
    for (int tries = 0; tries < CACHE_ENTRIES && slot < 0; tries++) {
      int i = (next_victim + tries) % CACHE_ENTRIES;
      if (cache[i]->refs == 1) { /* only the cache holds it */
        slot = i;
        evicted = drop_reference(cache[i]);
        next_victim = (i + 1) % CACHE_ENTRIES;
      }
    }
    if (slot >= 0) {
      cache[slot] = e;
      stored_count++;
    }
  }
  pthread_mutex_unlock(&cache_lock);
  if (evicted) entry_free(evicted);
  if (slot < 0) {
    free(key);
    free(e);
    return NULL;
  }
  return e;
}

codebook *book_cache_books(book_cache_entry *entry) { return entry->books; }

void book_cache_release(book_cache_entry *entry) {
  if (!entry) return;
  lock_cache();
  book_cache_entry *gone = drop_reference(entry);
  pthread_mutex_unlock(&cache_lock);
  if (gone) entry_free(gone);
}

void book_cache_counts(long *hits, long *stored, int *entries) {
  lock_cache();
  *hits = hit_count;
  *stored = stored_count;
  *entries = 0;
  for (int i = 0; i < CACHE_ENTRIES; i++) *entries += cache[i] != NULL;
  pthread_mutex_unlock(&cache_lock);
}
