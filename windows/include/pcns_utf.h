/* UTF-16 to UTF-8 by length, for the LSA filter (no CRT) and the sender.
 *
 * The input is counted in bytes, as UNICODE_STRING.Length is: an odd count is refused, the
 * buffer is never scanned for a terminating NUL and never read past `src_bytes`. Surrogate
 * pairs become one 4-byte sequence; an unpaired surrogate is refused (it has no UTF-8 form).
 * A NUL code unit inside the string is kept as the byte 0 (it is part of the counted string).
 */
#ifndef PCNS_UTF_H
#define PCNS_UTF_H

#include <windows.h>

#define PCNS_UTF_OK 0
#define PCNS_UTF_ODD_LENGTH 1    /* src_bytes is odd */
#define PCNS_UTF_SURROGATE 2     /* an unpaired high or low surrogate */
#define PCNS_UTF_NO_SPACE 3      /* dst_cap too small */
#define PCNS_UTF_BAD_ARGUMENT 4  /* NULL buffer with a non-zero length */

/* The most UTF-8 bytes `src_bytes` of UTF-16 can need (3 per code unit). */
#define PCNS_UTF8_MAX_FOR_UTF16_BYTES(src_bytes) (((src_bytes) / 2) * 3)

/* Convert `src_bytes` bytes of UTF-16LE at `src` to UTF-8 in `dst` (at most `dst_cap` bytes,
 * no NUL appended); `*dst_len` gets the length written. On failure `*dst_len` is 0 and
 * whatever was written to `dst` has been zeroed. */
int pcns_utf16_to_utf8(const WCHAR *src, size_t src_bytes, unsigned char *dst, size_t dst_cap,
                       size_t *dst_len);

#endif
