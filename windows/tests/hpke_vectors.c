/* hpke_vectors.exe: checks src/seal.c (and src/utf.c) from tests/windows/test_seal_vectors.py.
 *
 *   hpke_vectors vectors FILE
 *       FILE: one RFC 9180 vector a line, eight hex fields separated by spaces ("-" = empty):
 *       skEm pkEm pkRm info aad pt enc ct. Seals pt with the given ephemeral key and checks enc
 *       and ct byte for byte. Prints a line per vector; exit 0 when every vector matched.
 *   hpke_vectors seal PK INFO PT OUT     (hex, "-" = empty) seal PT to PK with INFO (fresh
 *       ephemeral key, empty aad) and write the sealed bytes to the file OUT.
 *   hpke_vectors info SOURCE WEBHOOK_ID USER KEY_ID    (hex UTF-8) print the seal's info, hex.
 *   hpke_vectors point PK                (hex) "on-curve" (exit 0) or "off-curve" (exit 4).
 *   hpke_vectors utf16 UNITS             (hex UTF-16LE) print the UTF-8, hex, or "error N".
 *
 * Exit codes: 0 ok, 1 mismatch, 2 usage or input error, 3 a call failed, 4 point refused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "pcns_seal.h"
#include "pcns_utf.h"

#define EXIT_MISMATCH 1
#define EXIT_USAGE 2
#define EXIT_FAILED 3
#define EXIT_OFF_CURVE 4

typedef struct {
    BYTE *data;
    ULONG len;
} buf;

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parse hex (narrow) into a fresh buffer; "-" is empty. FALSE on bad input. */
static BOOL parse_hex(const char *s, size_t n, buf *out)
{
    size_t i;
    out->data = NULL;
    out->len = 0;
    if (n == 1 && s[0] == '-')
        return TRUE;
    if (n % 2 != 0)
        return FALSE;
    out->data = malloc(n / 2 + 1);
    if (out->data == NULL)
        return FALSE;
    for (i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return FALSE;
        out->data[i] = (BYTE)(hi << 4 | lo);
    }
    out->len = (ULONG)(n / 2);
    return TRUE;
}

static BOOL parse_whex(const wchar_t *s, buf *out)
{
    size_t n = wcslen(s), i;
    char *narrow = malloc(n + 1);
    BOOL ok;
    if (narrow == NULL)
        return FALSE;
    for (i = 0; i < n; i++)
        narrow[i] = s[i] < 0x80 ? (char)s[i] : '?';
    narrow[n] = 0;
    ok = parse_hex(narrow, n, out);
    free(narrow);
    return ok;
}

static void print_hex(const BYTE *p, ULONG n)
{
    ULONG i;
    for (i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static int run_vectors(const wchar_t *path)
{
    static char line[1 << 16];
    FILE *f = _wfopen(path, L"rb");
    int total = 0, passed = 0;

    if (f == NULL) {
        fwprintf(stderr, L"cannot open %ls\n", path);
        return EXIT_USAGE;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        buf field[8];
        char *p = line;
        int i, nf = 0;
        BYTE *out;
        ULONG out_len = 0;
        NTSTATUS st;

        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == 0 || line[0] == '#')
            continue;
        total++;
        memset(field, 0, sizeof(field));
        while (nf < 8 && *p != 0) {
            size_t n = strcspn(p, " ");
            if (!parse_hex(p, n, &field[nf])) {
                printf("vector %d: field %d is not hex\n", total, nf);
                fclose(f);
                return EXIT_USAGE;
            }
            nf++;
            p += n;
            while (*p == ' ')
                p++;
        }
        if (nf != 8 || field[0].len != 32 || field[1].len != 65 || field[2].len != 65) {
            printf("vector %d: want 8 fields (skEm pkEm pkRm info aad pt enc ct)\n", total);
            fclose(f);
            return EXIT_USAGE;
        }
        out = malloc(field[5].len + PCNS_SEAL_OVERHEAD);
        if (out == NULL)
            return EXIT_FAILED;
        st = pcns_seal_with_ephemeral(field[0].data, field[1].data, field[2].data, field[3].data,
                                      field[3].len, field[4].data, field[4].len, field[5].data,
                                      field[5].len, out, field[5].len + PCNS_SEAL_OVERHEAD,
                                      &out_len);
        if (!BCRYPT_SUCCESS(st)) {
            printf("vector %d: seal failed 0x%08lx\n", total, (unsigned long)st);
        } else if (field[6].len != PCNS_SEAL_ENC_LEN ||
                   memcmp(out, field[6].data, PCNS_SEAL_ENC_LEN) != 0) {
            printf("vector %d: enc differs\n", total);
        } else if (out_len - PCNS_SEAL_ENC_LEN != field[7].len ||
                   memcmp(out + PCNS_SEAL_ENC_LEN, field[7].data, field[7].len) != 0) {
            printf("vector %d: ct differs\n", total);
            print_hex(out + PCNS_SEAL_ENC_LEN, out_len - PCNS_SEAL_ENC_LEN);
        } else {
            printf("vector %d: ok\n", total);
            passed++;
        }
        free(out);
        for (i = 0; i < 8; i++)
            free(field[i].data);
    }
    fclose(f);
    printf("passed %d of %d\n", passed, total);
    return total > 0 && passed == total ? 0 : EXIT_MISMATCH;
}

static int run_seal(const wchar_t *pk_hex, const wchar_t *info_hex, const wchar_t *pt_hex,
                    const wchar_t *out_path)
{
    buf pk, info, pt;
    BYTE *out;
    ULONG out_len = 0;
    NTSTATUS st;
    FILE *f;

    if (!parse_whex(pk_hex, &pk) || !parse_whex(info_hex, &info) || !parse_whex(pt_hex, &pt) ||
        pk.len != PCNS_P256_POINT_LEN) {
        fprintf(stderr, "seal: bad hex or a public key that is not 65 bytes\n");
        return EXIT_USAGE;
    }
    out = malloc(pt.len + PCNS_SEAL_OVERHEAD);
    if (out == NULL)
        return EXIT_FAILED;
    st = pcns_seal(pk.data, info.data, info.len, pt.data, pt.len, out,
                   pt.len + PCNS_SEAL_OVERHEAD, &out_len);
    if (st == PCNS_STATUS_NOT_ON_CURVE) {
        printf("seal refused: the public key is not a point on P-256\n");
        return EXIT_OFF_CURVE;
    }
    if (!BCRYPT_SUCCESS(st)) {
        printf("seal failed 0x%08lx\n", (unsigned long)st);
        return EXIT_FAILED;
    }
    f = _wfopen(out_path, L"wb");
    if (f == NULL || fwrite(out, 1, out_len, f) != out_len || fclose(f) != 0) {
        fwprintf(stderr, L"cannot write %ls\n", out_path);
        return EXIT_FAILED;
    }
    printf("sealed %lu bytes\n", (unsigned long)out_len);
    return 0;
}

static int run_info(wchar_t **argv)
{
    buf s[4];
    pcns_bytes b[4];
    BYTE *out;
    ULONG cap = PCNS_SEAL_INFO_TAG_LEN + 16, len = 0;
    int i;
    NTSTATUS st;

    for (i = 0; i < 4; i++) {
        if (!parse_whex(argv[i], &s[i]))
            return EXIT_USAGE;
        b[i].data = s[i].data;
        b[i].len = s[i].len;
        cap += s[i].len;
    }
    out = malloc(cap);
    if (out == NULL)
        return EXIT_FAILED;
    st = pcns_seal_info(b[0], b[1], b[2], b[3], out, cap, &len);
    if (!BCRYPT_SUCCESS(st)) {
        printf("info failed 0x%08lx\n", (unsigned long)st);
        return EXIT_FAILED;
    }
    print_hex(out, len);
    return 0;
}

static int run_point(const wchar_t *pk_hex)
{
    buf pk;
    if (!parse_whex(pk_hex, &pk))
        return EXIT_USAGE;
    if (pk.len != PCNS_P256_POINT_LEN || pcns_p256_check_point(pk.data) != PCNS_STATUS_OK) {
        printf("off-curve\n");
        return EXIT_OFF_CURVE;
    }
    printf("on-curve\n");
    return 0;
}

static int run_utf16(const wchar_t *hex)
{
    buf in;
    unsigned char *out;
    size_t cap, len = 0;
    int rc;

    if (!parse_whex(hex, &in))
        return EXIT_USAGE;
    cap = PCNS_UTF8_MAX_FOR_UTF16_BYTES(in.len);
    out = malloc(cap + 1);
    if (out == NULL)
        return EXIT_FAILED;
    rc = pcns_utf16_to_utf8((const WCHAR *)in.data, in.len, out, cap, &len);
    if (rc != PCNS_UTF_OK) {
        printf("error %d\n", rc);
        return EXIT_FAILED;
    }
    print_hex(out, (ULONG)len);
    return 0;
}

int wmain(int argc, wchar_t **argv)
{
    if (argc == 3 && wcscmp(argv[1], L"vectors") == 0)
        return run_vectors(argv[2]);
    if (argc == 6 && wcscmp(argv[1], L"seal") == 0)
        return run_seal(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 6 && wcscmp(argv[1], L"info") == 0)
        return run_info(argv + 2);
    if (argc == 3 && wcscmp(argv[1], L"point") == 0)
        return run_point(argv[2]);
    if (argc == 3 && wcscmp(argv[1], L"utf16") == 0)
        return run_utf16(argv[2]);
    fprintf(stderr, "usage: hpke_vectors vectors FILE | seal PK INFO PT OUT | "
                    "info SOURCE WEBHOOK_ID USER KEY_ID | point PK | utf16 UNITS\n");
    return EXIT_USAGE;
}
