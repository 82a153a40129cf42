/* UTF-16 (by length) to UTF-8. See include/pcns_utf.h. No CRT. */
#include "pcns_utf.h"

int pcns_utf16_to_utf8(const WCHAR *src, size_t src_bytes, unsigned char *dst, size_t dst_cap,
                       size_t *dst_len)
{
    size_t units, i, n = 0;
    int rc = PCNS_UTF_OK;

    *dst_len = 0;
    if (src_bytes % 2 != 0)
        return PCNS_UTF_ODD_LENGTH;
    units = src_bytes / 2;
    if ((units != 0 && src == NULL) || (dst == NULL && dst_cap != 0))
        return PCNS_UTF_BAD_ARGUMENT;

    for (i = 0; i < units; i++) {
        ULONG cp = src[i];
        size_t need;

        if (cp >= 0xD800 && cp <= 0xDBFF) {
            ULONG lo;
            if (i + 1 >= units) {
                rc = PCNS_UTF_SURROGATE;
                goto fail;
            }
            lo = src[i + 1];
            if (lo < 0xDC00 || lo > 0xDFFF) {
                rc = PCNS_UTF_SURROGATE;
                goto fail;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i++;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            rc = PCNS_UTF_SURROGATE;
            goto fail;
        }

        need = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        if (dst_cap - n < need) {
            rc = PCNS_UTF_NO_SPACE;
            goto fail;
        }
        switch (need) {
        case 1:
            dst[n++] = (unsigned char)cp;
            break;
        case 2:
            dst[n++] = (unsigned char)(0xC0 | (cp >> 6));
            dst[n++] = (unsigned char)(0x80 | (cp & 0x3F));
            break;
        case 3:
            dst[n++] = (unsigned char)(0xE0 | (cp >> 12));
            dst[n++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            dst[n++] = (unsigned char)(0x80 | (cp & 0x3F));
            break;
        default:
            dst[n++] = (unsigned char)(0xF0 | (cp >> 18));
            dst[n++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
            dst[n++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            dst[n++] = (unsigned char)(0x80 | (cp & 0x3F));
            break;
        }
    }
    *dst_len = n;
    return PCNS_UTF_OK;

fail:
    if (n != 0)
        SecureZeroMemory(dst, n);
    return rc;
}
