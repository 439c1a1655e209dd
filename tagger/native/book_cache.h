/* soundtag: decoded Vorbis codebooks shared between streams with the same setup header
 * (book_cache.c; used by info.c and block.c). */
#ifndef SOUNDTAG_BOOK_CACHE_H
#define SOUNDTAG_BOOK_CACHE_H

#include "codebook.h"

typedef struct book_cache_entry book_cache_entry;

/* The decoded books of this setup header if the cache holds them (a reference the
 * caller releases), else NULL. */
book_cache_entry *book_cache_find(const unsigned char *setup, long bytes, int count);
/* Offer the books a stream just decoded from this setup header. On success the cache
 * owns them and the caller holds a reference to share them through; NULL: not taken
 * (the cache is full of books in use, or out of memory), the caller keeps its books. */
book_cache_entry *book_cache_offer(const unsigned char *setup, long bytes, codebook *books, int count);
codebook *book_cache_books(book_cache_entry *entry);
void book_cache_release(book_cache_entry *entry);
/* For the tests: streams that took cached books, books taken into the cache, and the
 * entries it holds now. */
void book_cache_counts(long *hits, long *stored, int *entries);

#endif
