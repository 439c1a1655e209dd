/* soundtag: libvorbis's inverse MDCT through PFFFT (imdct_pffft.c; used by mdct.c). */
#ifndef SOUNDTAG_IMDCT_PFFFT_H
#define SOUNDTAG_IMDCT_PFFFT_H

typedef struct imdct_fast imdct_fast;

imdct_fast *imdct_fast_new(int n); /* NULL where PFFFT cannot take n: use libvorbis's */
void imdct_fast_free(imdct_fast *t);
void imdct_fast_backward(imdct_fast *t, const float *in, float *out);

#endif
