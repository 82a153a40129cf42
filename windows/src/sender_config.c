/* pcns-sender: HKLM\SOFTWARE\pcns\Sender (README "The registry key"): `configure` writes and
 * ACLs it, the delivery loop and `status` read it. The secret is kept DPAPI-protected (machine
 * scope, entropy "pcns-sender-secret-v1") and only unprotected for the length of a pass. */
#include "sender_internal.h"
#include "pcns_seal.h"

#include <sddl.h>
#include <wincrypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#define ENTROPY "pcns-sender-secret-v1"
#define SPOOL_DIR_MAX (MAX_PATH - 64) /* WCHARs, exclusive: what `configure --spool` accepts */
#define DOMAIN_SID_MAX 180            /* characters: what `configure --domain-sid` accepts */

/* SYSTEM and Administrators only, not inherited from SOFTWARE. */
static const wchar_t KEY_SDDL[] = L"D:P(A;CI;KA;;;SY)(A;CI;KA;;;BA)";
/* The spool holds only sealed records, yet no one but SYSTEM (the filter, the sender) needs it:
 * the same protected DACL as `install` sets. */
static const wchar_t DIR_SDDL[] = L"D:P(A;OICI;FA;;;SY)";

static BOOL read_sz(HKEY key, const wchar_t *name, wchar_t *out, DWORD cap_chars)
{
    DWORD type = 0, size = cap_chars * sizeof(wchar_t);
    LSTATUS st;

    out[0] = 0;
    st = RegQueryValueExW(key, name, NULL, &type, (BYTE *)out, &size);
    if (st != ERROR_SUCCESS || (type != REG_SZ && type != REG_EXPAND_SZ)) {
        out[0] = 0;
        return FALSE;
    }
    if (size >= cap_chars * sizeof(wchar_t))
        size = (cap_chars - 1) * sizeof(wchar_t);
    out[size / sizeof(wchar_t)] = 0;
    return out[0] != 0;
}

/* The value of one hex digit, or -1. */
static int hex_digit(unsigned int c)
{
    return (c >= '0' && c <= '9')   ? (int)(c - '0')
           : (c >= 'a' && c <= 'f') ? (int)(c - 'a' + 10)
           : (c >= 'A' && c <= 'F') ? (int)(c - 'A' + 10)
                                    : -1;
}

/* Put hex digit number i (value v) into out: high nibble first. */
static void hex_put(BYTE *out, size_t i, int v)
{
    if (i % 2 == 0)
        out[i / 2] = (BYTE)(v << 4);
    else
        out[i / 2] |= (BYTE)v;
}

BOOL hex_decode_w(const wchar_t *hex, BYTE *out, size_t n)
{
    size_t i;
    if (wcslen(hex) != n * 2)
        return FALSE;
    for (i = 0; i < n * 2; i++) {
        int v = hex_digit((unsigned int)hex[i]);
        if (v < 0)
            return FALSE;
        hex_put(out, i, v);
    }
    return TRUE;
}

void default_spool_dir(wchar_t *out, DWORD cap)
{
    if (!ExpandEnvironmentStringsW(PCNS_DEFAULT_SPOOL_DIR, out, cap) || out[0] == L'%')
        wcsncpy(out, L"C:\\ProgramData\\pcns\\spool", cap);
    out[cap - 1] = 0;
}

void config_free(sender_config *c)
{
    if (c) {
        pcns_config_clear(c);
        free(c);
    }
}

static const struct {
    DWORD bit;
    const wchar_t *name;
} VALUES[] = {
    {PCNS_CFG_URL, PCNS_REG_URL},
    {PCNS_CFG_SOURCE, PCNS_REG_SOURCE},
    {PCNS_CFG_DOMAIN, PCNS_REG_DOMAIN},
    {PCNS_CFG_DOMAIN_SID, PCNS_REG_DOMAIN_SID},
    {PCNS_CFG_RECIPIENT_KEY_ID, PCNS_REG_RECIPIENT_KEY_ID},
    {PCNS_CFG_RECIPIENT_PUBLIC_KEY, PCNS_REG_RECIPIENT_PUBLIC_KEY},
    {PCNS_CFG_SECRET, PCNS_REG_SECRET},
    {PCNS_CFG_SPOOL_DIR, PCNS_REG_SPOOL_DIR},
    {PCNS_CFG_SERVER_CERT_SHA256, PCNS_REG_SERVER_CERT_SHA256},
    {PCNS_CFG_CLIENT_CERT_THUMBPRINT, PCNS_REG_CLIENT_CERT_THUMBPRINT},
    {PCNS_CFG_ALERT_AGE_SECONDS, PCNS_REG_ALERT_AGE_SECONDS},
    {PCNS_CFG_TIMEOUT_MS, PCNS_REG_TIMEOUT_MS},
};

DWORD config_load(sender_config **out, wchar_t *msg, size_t msg_cap)
{
    sender_config *c;
    DWORD err;
    size_t i;

    *out = NULL;
    c = malloc(sizeof *c);
    if (!c) {
        swprintf(msg, msg_cap, L"out of memory");
        return ERROR_OUTOFMEMORY;
    }
    err = pcns_config_read(c);
    if (err) {
        swprintf(msg, msg_cap, L"HKLM\\%ls cannot be read (error %lu)%ls", PCNS_REG_KEY, err,
                 err == ERROR_FILE_NOT_FOUND ? L": run `pcns-sender configure`" : L"");
        config_free(c);
        return err;
    }
    for (i = 0; i < ARRAYSIZE(VALUES); i++) {
        if (c->invalid & VALUES[i].bit) {
            swprintf(msg, msg_cap, L"registry value %ls is not usable: run `pcns-sender configure`",
                     VALUES[i].name);
            config_free(c);
            return ERROR_BADKEY;
        }
    }
    for (i = 0; i < ARRAYSIZE(VALUES); i++) {
        DWORD bit = VALUES[i].bit;
        if ((bit == PCNS_CFG_URL || bit == PCNS_CFG_SOURCE || bit == PCNS_CFG_SECRET) &&
            !(c->present & bit)) {
            swprintf(msg, msg_cap, L"registry value %ls is missing: run `pcns-sender configure`",
                     VALUES[i].name);
            config_free(c);
            return ERROR_BADKEY;
        }
    }
    /* config.c takes up to 1024 WCHARs of SpoolDir and 256 bytes of DomainSid; the sender's
     * paths and fields are sized for what `configure` writes (MAX_PATH - 64, 180): a longer
     * value written by hand is refused here rather than overrunning them. */
    if (c->spool_dir_len >= SPOOL_DIR_MAX || c->domain_sid_len > DOMAIN_SID_MAX) {
        swprintf(msg, msg_cap,
                 L"registry value %ls is too long (at most %u characters): run `pcns-sender "
                 L"configure`",
                 c->spool_dir_len >= SPOOL_DIR_MAX ? PCNS_REG_SPOOL_DIR : PCNS_REG_DOMAIN_SID,
                 c->spool_dir_len >= SPOOL_DIR_MAX ? SPOOL_DIR_MAX - 1 : DOMAIN_SID_MAX);
        config_free(c);
        return ERROR_BADKEY;
    }
    *out = c;
    return 0;
}

BOOL config_changed_since(const FILETIME *seen, FILETIME *now)
{
    HKEY key = NULL;
    FILETIME ft;
    BOOL changed = FALSE;

    if (RegOpenKeyExW(HKEY_LOCAL_MACHINE, SENDER_KEY, 0, KEY_QUERY_VALUE, &key) != ERROR_SUCCESS)
        return FALSE;
    if (RegQueryInfoKeyW(key, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &ft) ==
        ERROR_SUCCESS) {
        changed = CompareFileTime(&ft, seen) != 0;
        if (now)
            *now = ft;
    }
    RegCloseKey(key);
    return changed;
}

DWORD secret_unprotect(const sender_config *c, DATA_BLOB *key)
{
    DATA_BLOB in, entropy;

    key->pbData = NULL;
    key->cbData = 0;
    in.pbData = (BYTE *)c->secret;
    in.cbData = c->secret_len;
    entropy.pbData = (BYTE *)ENTROPY;
    entropy.cbData = (DWORD)strlen(ENTROPY);
    if (!CryptUnprotectData(&in, NULL, &entropy, NULL, NULL, CRYPTPROTECT_UI_FORBIDDEN, key))
        return GetLastError() ? GetLastError() : ERROR_GEN_FAILURE;
    return 0;
}

void secret_wipe(DATA_BLOB *key)
{
    if (key->pbData) {
        SecureZeroMemory(key->pbData, key->cbData);
        LocalFree(key->pbData);
    }
    key->pbData = NULL;
    key->cbData = 0;
}

/* ------------------------------------------------------------------ status */

void status_write(const wchar_t *name, const wchar_t *value)
{
    HKEY key = NULL;

    if (RegCreateKeyExW(HKEY_LOCAL_MACHINE, SENDER_KEY L"\\Status", 0, NULL, 0, KEY_SET_VALUE,
                        NULL, &key, NULL) != ERROR_SUCCESS)
        return;
    if (value)
        RegSetValueExW(key, name, 0, REG_SZ, (const BYTE *)value,
                       (DWORD)((wcslen(value) + 1) * sizeof(wchar_t)));
    else
        RegDeleteValueW(key, name);
    RegCloseKey(key);
}

BOOL status_read(const wchar_t *name, wchar_t *out, DWORD cap)
{
    HKEY key = NULL;
    BOOL ok;

    out[0] = 0;
    if (RegOpenKeyExW(HKEY_LOCAL_MACHINE, SENDER_KEY L"\\Status", 0, KEY_READ, &key) !=
        ERROR_SUCCESS)
        return FALSE;
    ok = read_sz(key, name, out, cap);
    RegCloseKey(key);
    return ok;
}

/* --------------------------------------------------------------- configure */

static int usage_error(const wchar_t *fmt, ...)
{
    va_list ap;
    wchar_t line[1024];

    va_start(ap, fmt);
    vswprintf(line, ARRAYSIZE(line), fmt, ap);
    va_end(ap);
    line[ARRAYSIZE(line) - 1] = 0;
    say(stderr, L"pcns-sender configure: %ls\n", line);
    return 2;
}

/* A whole small file into memory (NUL-terminated); FALSE with the error in GetLastError(). */
static BOOL read_small_file(const wchar_t *path, char **data, DWORD *len)
{
    HANDLE f;
    LARGE_INTEGER size;
    DWORD got = 0;
    char *p;

    *data = NULL;
    *len = 0;
    f = CreateFileW(path, GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING,
                    FILE_ATTRIBUTE_NORMAL, NULL);
    if (f == INVALID_HANDLE_VALUE)
        return FALSE;
    if (!GetFileSizeEx(f, &size) || size.QuadPart > 65536) {
        CloseHandle(f);
        SetLastError(ERROR_FILE_TOO_LARGE);
        return FALSE;
    }
    p = malloc((size_t)size.QuadPart + 1);
    if (!p) {
        CloseHandle(f);
        SetLastError(ERROR_OUTOFMEMORY);
        return FALSE;
    }
    if (!ReadFile(f, p, (DWORD)size.QuadPart, &got, NULL) || got != (DWORD)size.QuadPart) {
        DWORD e = GetLastError();
        SecureZeroMemory(p, (size_t)size.QuadPart + 1);
        free(p);
        CloseHandle(f);
        SetLastError(e ? e : ERROR_READ_FAULT);
        return FALSE;
    }
    CloseHandle(f);
    p[got] = 0;
    *data = p;
    *len = got;
    return TRUE;
}

static void wipe_free(char *p, DWORD len)
{
    if (p) {
        SecureZeroMemory(p, len);
        free(p);
    }
}

static void trim(char **s, DWORD *len)
{
    while (*len && ((*s)[0] == ' ' || (*s)[0] == '\t' || (*s)[0] == '\r' || (*s)[0] == '\n' ||
                    (unsigned char)(*s)[0] == 0xEF || (unsigned char)(*s)[0] == 0xBB ||
                    (unsigned char)(*s)[0] == 0xBF)) {
        (*s)++;
        (*len)--;
    }
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t' || (*s)[*len - 1] == '\r' ||
                    (*s)[*len - 1] == '\n'))
        (*len)--;
}

/* "whsec_<base64>" -> DPAPI-protected key bytes. */
static int load_secret(const wchar_t *path, DATA_BLOB *protected_out)
{
    char *data = NULL, *s;
    DWORD len = 0, slen;
    BYTE key[128];
    size_t klen = 0;
    DATA_BLOB in, entropy;
    int rc = 2;

    protected_out->pbData = NULL;
    protected_out->cbData = 0;
    if (!read_small_file(path, &data, &len))
        return usage_error(L"--secret-file: cannot read %ls (error %lu)", path, GetLastError());
    s = data;
    slen = len;
    trim(&s, &slen);
    if (slen < 6 || memcmp(s, "whsec_", 6) != 0) {
        rc = usage_error(L"--secret-file: must hold the source secret, whsec_<base64>");
        goto out;
    }
    if (!b64_decode(s + 6, slen - 6, key, sizeof key, &klen)) {
        rc = usage_error(L"--secret-file: not valid base64 after whsec_");
        goto out;
    }
    if (klen < 24) {
        rc = usage_error(L"--secret-file: the secret is too short (at least 24 bytes of key)");
        goto out;
    }
    in.pbData = key;
    in.cbData = (DWORD)klen;
    entropy.pbData = (BYTE *)ENTROPY;
    entropy.cbData = (DWORD)strlen(ENTROPY);
    if (!CryptProtectData(&in, L"pcns source secret", &entropy, NULL, NULL,
                          CRYPTPROTECT_LOCAL_MACHINE | CRYPTPROTECT_UI_FORBIDDEN,
                          protected_out)) {
        rc = usage_error(L"--secret-file: CryptProtectData failed (error %lu)", GetLastError());
        goto out;
    }
    rc = 0;
out:
    SecureZeroMemory(key, sizeof key);
    wipe_free(data, len);
    return rc;
}

static BOOL hex_decode_a(const char *hex, size_t hn, BYTE *out, size_t n)
{
    size_t i;
    if (hn != n * 2)
        return FALSE;
    for (i = 0; i < hn; i++) {
        int v = hex_digit((unsigned char)hex[i]);
        if (v < 0)
            return FALSE;
        hex_put(out, i, v);
    }
    return TRUE;
}

/* The 65-byte point from 130 hex digits or a PEM SubjectPublicKeyInfo (id-ecPublicKey,
 * prime256v1). The point is checked to be on P-256 (pcns_p256_check_point). */
static int load_recipient_key(const wchar_t *path, BYTE point[65])
{
    static const BYTE P256_PARAMS[] = {0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};
    char *data = NULL, *s;
    DWORD len = 0, slen, der_len = 0, info_len = 0;
    BYTE *der = NULL;
    CERT_PUBLIC_KEY_INFO *info = NULL;
    int rc = 2;

    if (!read_small_file(path, &data, &len))
        return usage_error(L"--recipient-key-file: cannot read %ls (error %lu)", path,
                           GetLastError());
    s = data;
    slen = len;
    trim(&s, &slen);
    if (slen >= 10 && memcmp(s, "-----BEGIN", 10) == 0) {
        if (!CryptStringToBinaryA(s, slen, CRYPT_STRING_BASE64HEADER, NULL, &der_len, NULL, NULL) ||
            !der_len) {
            rc = usage_error(L"--recipient-key-file: not a PEM file (error %lu)", GetLastError());
            goto out;
        }
        der = malloc(der_len);
        if (!der) {
            rc = usage_error(L"--recipient-key-file: out of memory");
            goto out;
        }
        if (!CryptStringToBinaryA(s, slen, CRYPT_STRING_BASE64HEADER, der, &der_len, NULL, NULL)) {
            rc = usage_error(L"--recipient-key-file: not a PEM file (error %lu)", GetLastError());
            goto out;
        }
        if (!CryptDecodeObjectEx(X509_ASN_ENCODING, X509_PUBLIC_KEY_INFO, der, der_len,
                                 CRYPT_DECODE_ALLOC_FLAG, NULL, &info, &info_len)) {
            rc = usage_error(L"--recipient-key-file: the PEM is not a public key (error %lu)",
                             GetLastError());
            goto out;
        }
        if (!info->Algorithm.pszObjId || strcmp(info->Algorithm.pszObjId, szOID_ECC_PUBLIC_KEY) ||
            info->Algorithm.Parameters.cbData != sizeof P256_PARAMS ||
            memcmp(info->Algorithm.Parameters.pbData, P256_PARAMS, sizeof P256_PARAMS)) {
            rc = usage_error(L"--recipient-key-file: the PEM key is not an EC P-256 key");
            goto out;
        }
        if (info->PublicKey.cbData != 65 || info->PublicKey.cUnusedBits != 0 ||
            info->PublicKey.pbData[0] != 0x04) {
            rc = usage_error(L"--recipient-key-file: the PEM key is not an uncompressed point");
            goto out;
        }
        memcpy(point, info->PublicKey.pbData, 65);
    } else {
        if (!hex_decode_a(s, slen, point, 65) || point[0] != 0x04) {
            rc = usage_error(L"--recipient-key-file: must hold the hook key as 130 hex digits "
                             L"(04 || X || Y, `pcns keys hook export --format raw`) or as PEM");
            goto out;
        }
    }
    if (pcns_p256_check_point(point) != PCNS_STATUS_OK) {
        rc = usage_error(L"--recipient-key-file: the key is not a point on P-256");
        goto out;
    }
    rc = 0;
out:
    if (info)
        LocalFree(info);
    free(der);
    wipe_free(data, len);
    return rc;
}

static BOOL printable_ascii(const wchar_t *s, size_t max)
{
    size_t n = wcslen(s);
    if (n == 0 || n > max)
        return FALSE;
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7e)
            return FALSE;
    return TRUE;
}

static BOOL valid_source(const wchar_t *s)
{
    size_t i, n = wcslen(s);
    if (n == 0 || n > 64)
        return FALSE;
    for (i = 0; i < n; i++) {
        wchar_t c = s[i];
        BOOL alnum = (c >= L'A' && c <= L'Z') || (c >= L'a' && c <= L'z') || (c >= L'0' && c <= L'9');
        if (!alnum && (i == 0 || (c != L'.' && c != L'_' && c != L'-')))
            return FALSE;
    }
    return TRUE;
}

static BOOL valid_domain_sid(const wchar_t *s)
{
    PSID sid = NULL;
    BOOL ok;
    if (wcsncmp(s, L"S-1-", 4) != 0 || wcslen(s) > DOMAIN_SID_MAX)
        return FALSE;
    ok = ConvertStringSidToSidW(s, &sid);
    if (sid)
        LocalFree(sid);
    return ok;
}

static BOOL parse_dword(const wchar_t *s, DWORD lo, DWORD hi, DWORD *out)
{
    wchar_t *end = NULL;
    unsigned long long v;
    if (!*s || *s == L'-' || *s == L'+')
        return FALSE;
    v = wcstoull(s, &end, 10);
    if (*end || v < lo || v > hi)
        return FALSE;
    *out = (DWORD)v;
    return TRUE;
}

/* CreateDirectory for each missing component, the last with the spool's DACL. */
static DWORD make_dirs(const wchar_t *path, PSECURITY_DESCRIPTOR sd)
{
    wchar_t buf[MAX_PATH + 1];
    size_t i, n = wcslen(path);
    SECURITY_ATTRIBUTES sa = {sizeof sa, sd, FALSE};

    if (n == 0 || n >= ARRAYSIZE(buf))
        return ERROR_BAD_PATHNAME;
    wcscpy(buf, path);
    for (i = 3; i <= n; i++) {
        if (i == n || buf[i] == L'\\' || buf[i] == L'/') {
            wchar_t saved = buf[i];
            buf[i] = 0;
            if (!CreateDirectoryW(buf, i == n ? &sa : NULL)) {
                DWORD e = GetLastError();
                if (e != ERROR_ALREADY_EXISTS)
                    return e;
            }
            buf[i] = saved;
        }
    }
    return 0;
}

static LSTATUS set_sz(HKEY key, const wchar_t *name, const wchar_t *value)
{
    return RegSetValueExW(key, name, 0, REG_SZ, (const BYTE *)value,
                          (DWORD)((wcslen(value) + 1) * sizeof(wchar_t)));
}

static LSTATUS set_or_delete_sz(HKEY key, const wchar_t *name, const wchar_t *value)
{
    LSTATUS st;
    if (value && value[0])
        return set_sz(key, name, value);
    st = RegDeleteValueW(key, name);
    return st == ERROR_FILE_NOT_FOUND ? ERROR_SUCCESS : st;
}

static LSTATUS set_or_delete_dword(HKEY key, const wchar_t *name, BOOL present, DWORD value)
{
    LSTATUS st;
    if (present)
        return RegSetValueExW(key, name, 0, REG_DWORD, (const BYTE *)&value, sizeof value);
    st = RegDeleteValueW(key, name);
    return st == ERROR_FILE_NOT_FOUND ? ERROR_SUCCESS : st;
}

int configure_main(int argc, wchar_t **argv)
{
    const wchar_t *url = NULL, *source = NULL, *secret_file = NULL, *kid = NULL, *key_file = NULL;
    const wchar_t *domain = NULL, *domain_sid = NULL, *spool = NULL, *pin = NULL, *thumb = NULL;
    const wchar_t *alert = NULL, *timeout = NULL;
    DWORD alert_age = 0, timeout_ms = 0;
    BYTE point[65], pin_bytes[32], thumb_bytes[20];
    wchar_t msg[512], spool_buf[MAX_PATH], bad_dir[MAX_PATH + 8];
    DATA_BLOB secret = {0, NULL};
    PSECURITY_DESCRIPTOR key_sd = NULL, dir_sd = NULL;
    HKEY key = NULL;
    LSTATUS st;
    DWORD err;
    int i, rc = 2;

    for (i = 0; i < argc; i++) {
        const wchar_t *a = argv[i];
        const wchar_t **slot = NULL;
        if (!wcscmp(a, L"--url"))
            slot = &url;
        else if (!wcscmp(a, L"--source"))
            slot = &source;
        else if (!wcscmp(a, L"--secret-file"))
            slot = &secret_file;
        else if (!wcscmp(a, L"--recipient-key-id"))
            slot = &kid;
        else if (!wcscmp(a, L"--recipient-key-file"))
            slot = &key_file;
        else if (!wcscmp(a, L"--domain"))
            slot = &domain;
        else if (!wcscmp(a, L"--domain-sid"))
            slot = &domain_sid;
        else if (!wcscmp(a, L"--spool"))
            slot = &spool;
        else if (!wcscmp(a, L"--server-cert-sha256"))
            slot = &pin;
        else if (!wcscmp(a, L"--client-cert-thumbprint"))
            slot = &thumb;
        else if (!wcscmp(a, L"--alert-age"))
            slot = &alert;
        else if (!wcscmp(a, L"--timeout-ms"))
            slot = &timeout;
        else
            return usage_error(L"unknown option %ls", a);
        if (i + 1 >= argc)
            return usage_error(L"%ls needs a value", a);
        if (*slot)
            return usage_error(L"%ls given twice", a);
        *slot = argv[++i];
    }
    if (!url)
        return usage_error(L"--url is required");
    if (!source)
        return usage_error(L"--source is required");
    if (!secret_file)
        return usage_error(L"--secret-file is required");
    if (!kid)
        return usage_error(L"--recipient-key-id is required");
    if (!key_file)
        return usage_error(L"--recipient-key-file is required");

    msg[0] = 0;
    if (http_url_check(url, msg, ARRAYSIZE(msg)))
        return usage_error(L"%ls", msg);
    if (!valid_source(source))
        return usage_error(L"--source: must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter "
                           L"or digit");
    if (!printable_ascii(kid, 128))
        return usage_error(L"--recipient-key-id: must be the hook key id (hpk-...), printable "
                           L"ASCII");
    if (domain && (!printable_ascii(domain, 256)))
        return usage_error(L"--domain: must be the NetBIOS domain name, printable, no spaces");
    if (domain_sid && !valid_domain_sid(domain_sid))
        return usage_error(L"--domain-sid: not a SID (S-1-5-21-...)");
    if (pin && !hex_decode_w(pin, pin_bytes, sizeof pin_bytes))
        return usage_error(L"--server-cert-sha256: must be 64 hex digits (SHA-256 of the DER "
                           L"certificate)");
    if (thumb && !hex_decode_w(thumb, thumb_bytes, sizeof thumb_bytes))
        return usage_error(L"--client-cert-thumbprint: must be 40 hex digits (SHA-1 thumbprint)");
    if (alert && !parse_dword(alert, 60, 365u * 86400u, &alert_age))
        return usage_error(L"--alert-age: must be seconds, 60 to 31536000");
    if (timeout && !parse_dword(timeout, 100, 600000, &timeout_ms))
        return usage_error(L"--timeout-ms: must be milliseconds, 100 to 600000");
    if (spool) {
        /* A local drive only: the filter writes here from inside LSASS, where a network
         * share (\\server\share) would mean SMB on every password change (config.c refuses
         * it too). */
        if (wcslen(spool) >= SPOOL_DIR_MAX || !pcns_spool_dir_is_local(spool))
            return usage_error(L"--spool: must be an absolute path on a local drive (C:\\...), "
                               L"not a network share");
        wcscpy(spool_buf, spool);
    } else {
        default_spool_dir(spool_buf, ARRAYSIZE(spool_buf));
    }
    {
        size_t n = wcslen(spool_buf);
        while (n > 3 && (spool_buf[n - 1] == L'\\' || spool_buf[n - 1] == L'/'))
            spool_buf[--n] = 0;
    }
    rc = load_recipient_key(key_file, point);
    if (rc)
        return rc;
    rc = load_secret(secret_file, &secret);
    if (rc)
        return rc;

    rc = 1;
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(KEY_SDDL, SDDL_REVISION_1, &key_sd,
                                                              NULL) ||
        !ConvertStringSecurityDescriptorToSecurityDescriptorW(DIR_SDDL, SDDL_REVISION_1, &dir_sd,
                                                              NULL)) {
        say(stderr, L"pcns-sender configure: security descriptor (error %lu)\n",
                 GetLastError());
        goto out;
    }
    err = make_dirs(spool_buf, dir_sd);
    if (err) {
        say(stderr, L"pcns-sender configure: --spool: cannot create %ls (error %lu)\n",
                 spool_buf, err);
        rc = 2;
        goto out;
    }
    swprintf(bad_dir, ARRAYSIZE(bad_dir), L"%ls\\bad", spool_buf);
    err = make_dirs(bad_dir, dir_sd);
    if (err) {
        say(stderr, L"pcns-sender configure: cannot create %ls (error %lu)\n", bad_dir, err);
        goto out;
    }
    /* A folder that existed already gets the same protected DACL as a new one (this folder only:
     * SetFileSecurityW does not walk the records inside). */
    if (!SetFileSecurityW(spool_buf, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                          dir_sd) ||
        !SetFileSecurityW(bad_dir, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                          dir_sd)) {
        say(stderr, L"pcns-sender configure: cannot set the spool folder's DACL (error %lu)\n",
            GetLastError());
        goto out;
    }
    st = RegCreateKeyExW(HKEY_LOCAL_MACHINE, SENDER_KEY, 0, NULL, 0,
                         KEY_ALL_ACCESS | WRITE_DAC, NULL, &key, NULL);
    if (st != ERROR_SUCCESS) {
        say(stderr, L"pcns-sender configure: cannot create HKLM\\%ls (error %ld; run as "
                         L"an administrator)\n", SENDER_KEY, (long)st);
        goto out;
    }
    st = RegSetKeySecurity(key, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                           key_sd);
    if (st != ERROR_SUCCESS && st != ERROR_CALL_NOT_IMPLEMENTED) {
        say(stderr, L"pcns-sender configure: RegSetKeySecurity failed (error %ld)\n",
                 (long)st);
        goto out;
    }
    if ((st = set_sz(key, PCNS_REG_URL, url)) || (st = set_sz(key, PCNS_REG_SOURCE, source)) ||
        (st = set_sz(key, PCNS_REG_RECIPIENT_KEY_ID, kid)) ||
        (st = RegSetValueExW(key, PCNS_REG_RECIPIENT_PUBLIC_KEY, 0, REG_BINARY, point, sizeof point)) ||
        (st = RegSetValueExW(key, PCNS_REG_SECRET, 0, REG_BINARY, secret.pbData, secret.cbData)) ||
        (st = set_sz(key, PCNS_REG_SPOOL_DIR, spool_buf)) ||
        (st = set_or_delete_sz(key, PCNS_REG_DOMAIN, domain)) ||
        (st = set_or_delete_sz(key, PCNS_REG_DOMAIN_SID, domain_sid)) ||
        (st = set_or_delete_sz(key, PCNS_REG_SERVER_CERT_SHA256, pin)) ||
        (st = set_or_delete_sz(key, PCNS_REG_CLIENT_CERT_THUMBPRINT, thumb)) ||
        (st = set_or_delete_dword(key, PCNS_REG_ALERT_AGE_SECONDS, alert != NULL, alert_age)) ||
        (st = set_or_delete_dword(key, PCNS_REG_TIMEOUT_MS, timeout != NULL, timeout_ms))) {
        say(stderr, L"pcns-sender configure: writing the registry failed (error %ld)\n",
                 (long)st);
        goto out;
    }
    if ((st = RegFlushKey(key)) != ERROR_SUCCESS) {
        say(stderr, L"pcns-sender configure: RegFlushKey failed (error %ld)\n", (long)st);
        goto out;
    }
    say(stdout, L"configured: url %ls, source %ls, key %ls, spool %ls\n", url, source, kid, spool_buf);
    rc = 0;
out:
    if (key)
        RegCloseKey(key);
    if (dir_sd)
        LocalFree(dir_sd);
    if (key_sd)
        LocalFree(key_sd);
    if (secret.pbData)
        LocalFree(secret.pbData); /* protected bytes, not the key */
    return rc;
}
