/* HKLM\SOFTWARE\pcns\Sender into a pcns_config. See include/pcns_config.h. No CRT. */
#include "pcns_config.h"
#include "pcns_seal.h"
#include "pcns_utf.h"

/* Read one value into `buf` (at most `cap` bytes). ERROR_SUCCESS, ERROR_FILE_NOT_FOUND when
 * absent, ERROR_MORE_DATA when too large, ERROR_DATATYPE_MISMATCH when of another type. */
static DWORD query(HKEY key, const WCHAR *name, DWORD type1, DWORD type2, void *buf, DWORD cap,
                   DWORD *len, DWORD *type_out)
{
    DWORD type = REG_NONE, cb = cap;
    LSTATUS rc = RegQueryValueExW(key, name, NULL, &type, (BYTE *)buf, &cb);

    *len = 0;
    if (rc != ERROR_SUCCESS)
        return (DWORD)rc;
    if (type != type1 && type != type2)
        return ERROR_DATATYPE_MISMATCH;
    *len = cb;
    if (type_out != NULL)
        *type_out = type;
    return ERROR_SUCCESS;
}

/* Strip the NULs a REG_SZ's byte count may or may not include. `bytes` may be odd only if the
 * writer was wrong: the caller refuses that. */
static DWORD wide_len(const WCHAR *s, DWORD bytes)
{
    DWORD n = bytes / 2;
    while (n > 0 && s[n - 1] == 0)
        n--;
    return n;
}

/* A REG_SZ as UTF-8 (no NUL inside, at most PCNS_CFG_NAME_MAX bytes). */
static void read_utf8(HKEY key, const WCHAR *name, DWORD bit, WCHAR *scratch, DWORD scratch_cap,
                      char *out, DWORD *out_len, pcns_config *cfg)
{
    DWORD cb = 0, n, i, rc;
    size_t len = 0;

    out[0] = 0;
    *out_len = 0;
    rc = query(key, name, REG_SZ, REG_SZ, scratch, scratch_cap, &cb, NULL);
    if (rc == ERROR_FILE_NOT_FOUND)
        return;
    if (rc != ERROR_SUCCESS || cb % 2 != 0)
        goto bad;
    n = wide_len(scratch, cb);
    for (i = 0; i < n; i++) {
        if (scratch[i] == 0)
            goto bad;
    }
    if (n == 0)
        goto bad;
    if (pcns_utf16_to_utf8(scratch, (size_t)n * 2, (unsigned char *)out, PCNS_CFG_NAME_MAX,
                           &len) != PCNS_UTF_OK)
        goto bad;
    out[len] = 0;
    *out_len = (DWORD)len;
    cfg->present |= bit;
    return;
bad:
    out[0] = 0;
    *out_len = 0;
    cfg->invalid |= bit;
}

static int hex_digit(WCHAR c)
{
    if (c >= L'0' && c <= L'9')
        return c - L'0';
    if (c >= L'a' && c <= L'f')
        return c - L'a' + 10;
    if (c >= L'A' && c <= L'F')
        return c - L'A' + 10;
    return -1;
}

/* A REG_SZ of exactly 2 * `n` hex digits into `out`. */
static void read_hex(HKEY key, const WCHAR *name, DWORD bit, WCHAR *scratch, DWORD scratch_cap,
                     BYTE *out, DWORD n, pcns_config *cfg)
{
    DWORD cb = 0, len, i, rc;

    rc = query(key, name, REG_SZ, REG_SZ, scratch, scratch_cap, &cb, NULL);
    if (rc == ERROR_FILE_NOT_FOUND)
        return;
    if (rc != ERROR_SUCCESS || cb % 2 != 0)
        goto bad;
    len = wide_len(scratch, cb);
    if (len != 2 * n)
        goto bad;
    for (i = 0; i < n; i++) {
        int hi = hex_digit(scratch[2 * i]), lo = hex_digit(scratch[2 * i + 1]);
        if (hi < 0 || lo < 0)
            goto bad;
        out[i] = (BYTE)(hi << 4 | lo);
    }
    cfg->present |= bit;
    return;
bad:
    SecureZeroMemory(out, n);
    cfg->invalid |= bit;
}

static void read_dword(HKEY key, const WCHAR *name, DWORD bit, DWORD *out, pcns_config *cfg)
{
    DWORD v = 0, cb = 0, rc;

    rc = query(key, name, REG_DWORD, REG_DWORD, &v, sizeof(v), &cb, NULL);
    if (rc == ERROR_FILE_NOT_FOUND)
        return;
    if (rc != ERROR_SUCCESS || cb != sizeof(v)) {
        cfg->invalid |= bit;
        return;
    }
    *out = v;
    cfg->present |= bit;
}

static BOOL is_drive(const WCHAR *p)
{
    return ((p[0] >= L'A' && p[0] <= L'Z') || (p[0] >= L'a' && p[0] <= L'z')) && p[1] == L':' &&
           (p[2] == L'\\' || p[2] == L'/');
}

BOOL pcns_spool_dir_is_local(const WCHAR *path)
{
    if (path == NULL)
        return FALSE;
    if (path[0] == L'\\' && path[1] == L'\\' && path[2] == L'?' && path[3] == L'\\')
        return is_drive(path + 4);
    return is_drive(path);
}

/* Expand %variables% in `src` (NUL-terminated) into cfg->spool_dir; FALSE if it does not fit or
 * is not a local absolute path (pcns_spool_dir_is_local). */
static BOOL set_spool_dir(pcns_config *cfg, const WCHAR *src)
{
    DWORD n = ExpandEnvironmentStringsW(src, cfg->spool_dir, PCNS_CFG_SPOOL_DIR_MAX + 1);
    if (n == 0 || n > PCNS_CFG_SPOOL_DIR_MAX + 1 || !pcns_spool_dir_is_local(cfg->spool_dir)) {
        cfg->spool_dir[0] = 0;
        cfg->spool_dir_len = 0;
        return FALSE;
    }
    n -= 1; /* the count includes the NUL */
    while (n > 1 && (cfg->spool_dir[n - 1] == L'\\' || cfg->spool_dir[n - 1] == L'/'))
        n--;
    cfg->spool_dir[n] = 0;
    cfg->spool_dir_len = n;
    return n != 0;
}

void pcns_config_clear(pcns_config *cfg)
{
    SecureZeroMemory(cfg, sizeof(*cfg));
}

static DWORD read_values(HKEY root, const WCHAR *subkey, BOOL all, pcns_config *cfg)
{
    /* Scratch for strings, on the heap: LSASS threads' stacks are not ours to spend. */
    const DWORD scratch_cap = (PCNS_CFG_URL_MAX + 2) * sizeof(WCHAR);
    WCHAR *scratch = NULL;
    HKEY key = NULL;
    DWORD rc, cb = 0, type = 0, n, i;
    LSTATUS ls;

    pcns_config_clear(cfg);
    cfg->alert_age_seconds = PCNS_DEFAULT_ALERT_AGE_SECONDS;
    cfg->timeout_ms = PCNS_DEFAULT_TIMEOUT_MS;
    set_spool_dir(cfg, PCNS_DEFAULT_SPOOL_DIR);

    ls = RegOpenKeyExW(root, subkey, 0, KEY_QUERY_VALUE | KEY_WOW64_64KEY, &key);
    if (ls != ERROR_SUCCESS)
        return (DWORD)ls;
    scratch = HeapAlloc(GetProcessHeap(), 0, scratch_cap);
    if (scratch == NULL) {
        rc = ERROR_NOT_ENOUGH_MEMORY;
        goto out_key;
    }

    read_utf8(key, PCNS_REG_SOURCE, PCNS_CFG_SOURCE, scratch, scratch_cap, cfg->source,
              &cfg->source_len, cfg);
    read_utf8(key, PCNS_REG_RECIPIENT_KEY_ID, PCNS_CFG_RECIPIENT_KEY_ID, scratch, scratch_cap,
              cfg->key_id, &cfg->key_id_len, cfg);

    /* RecipientPublicKey (REG_BINARY, 65 bytes, on the curve) */
    rc = query(key, PCNS_REG_RECIPIENT_PUBLIC_KEY, REG_BINARY, REG_BINARY, scratch, scratch_cap,
               &cb, NULL);
    if (rc == ERROR_SUCCESS && cb == sizeof(cfg->recipient_public_key) &&
        pcns_p256_check_point((const BYTE *)scratch) == PCNS_STATUS_OK) {
        memcpy(cfg->recipient_public_key, scratch, sizeof(cfg->recipient_public_key));
        cfg->present |= PCNS_CFG_RECIPIENT_PUBLIC_KEY;
    } else if (rc != ERROR_FILE_NOT_FOUND) {
        cfg->invalid |= PCNS_CFG_RECIPIENT_PUBLIC_KEY;
    }

    /* SpoolDir (REG_SZ or REG_EXPAND_SZ; %variables% expanded either way) */
    rc = query(key, PCNS_REG_SPOOL_DIR, REG_SZ, REG_EXPAND_SZ, scratch,
               scratch_cap - sizeof(WCHAR), &cb, &type);
    if (rc == ERROR_SUCCESS && cb % 2 == 0 && (n = wide_len(scratch, cb)) != 0) {
        scratch[n] = 0;
        for (i = 0; i < n && scratch[i] != 0; i++)
            ;
        if (i == n && set_spool_dir(cfg, scratch)) {
            cfg->present |= PCNS_CFG_SPOOL_DIR;
        } else {
            cfg->invalid |= PCNS_CFG_SPOOL_DIR;
            cfg->spool_dir[0] = 0;
            cfg->spool_dir_len = 0;
        }
    } else if (rc != ERROR_FILE_NOT_FOUND) {
        /* A SpoolDir that is there but unusable must not fall back to the default. */
        cfg->invalid |= PCNS_CFG_SPOOL_DIR;
        cfg->spool_dir[0] = 0;
        cfg->spool_dir_len = 0;
    }
    if (!all)
        goto done;

    /* Url (REG_SZ, WCHARs) */
    rc = query(key, PCNS_REG_URL, REG_SZ, REG_SZ, cfg->url, PCNS_CFG_URL_MAX * sizeof(WCHAR), &cb,
               NULL);
    if (rc == ERROR_SUCCESS && cb % 2 == 0 && (n = wide_len(cfg->url, cb)) != 0) {
        cfg->url[n] = 0;
        cfg->url_len = n;
        for (i = 0; i < n; i++) {
            if (cfg->url[i] == 0)
                break;
        }
        if (i == n)
            cfg->present |= PCNS_CFG_URL;
        else
            cfg->invalid |= PCNS_CFG_URL;
    } else if (rc != ERROR_FILE_NOT_FOUND) {
        cfg->invalid |= PCNS_CFG_URL;
    }
    if (!(cfg->present & PCNS_CFG_URL)) {
        SecureZeroMemory(cfg->url, sizeof(cfg->url));
        cfg->url_len = 0;
    }

    read_utf8(key, PCNS_REG_DOMAIN, PCNS_CFG_DOMAIN, scratch, scratch_cap, cfg->domain,
              &cfg->domain_len, cfg);
    read_utf8(key, PCNS_REG_DOMAIN_SID, PCNS_CFG_DOMAIN_SID, scratch, scratch_cap,
              cfg->domain_sid, &cfg->domain_sid_len, cfg);

    /* Secret (REG_BINARY, kept as stored: the sender unprotects it) */
    rc = query(key, PCNS_REG_SECRET, REG_BINARY, REG_BINARY, cfg->secret, sizeof(cfg->secret),
               &cb, NULL);
    if (rc == ERROR_SUCCESS && cb != 0) {
        cfg->secret_len = cb;
        cfg->present |= PCNS_CFG_SECRET;
    } else if (rc != ERROR_FILE_NOT_FOUND) {
        SecureZeroMemory(cfg->secret, sizeof(cfg->secret));
        cfg->invalid |= PCNS_CFG_SECRET;
    }

    read_hex(key, PCNS_REG_SERVER_CERT_SHA256, PCNS_CFG_SERVER_CERT_SHA256, scratch, scratch_cap,
             cfg->server_cert_sha256, sizeof(cfg->server_cert_sha256), cfg);
    read_hex(key, PCNS_REG_CLIENT_CERT_THUMBPRINT, PCNS_CFG_CLIENT_CERT_THUMBPRINT, scratch,
             scratch_cap, cfg->client_cert_thumbprint, sizeof(cfg->client_cert_thumbprint), cfg);
    read_dword(key, PCNS_REG_ALERT_AGE_SECONDS, PCNS_CFG_ALERT_AGE_SECONDS,
               &cfg->alert_age_seconds, cfg);
    read_dword(key, PCNS_REG_TIMEOUT_MS, PCNS_CFG_TIMEOUT_MS, &cfg->timeout_ms, cfg);

done:
    rc = ERROR_SUCCESS;
    SecureZeroMemory(scratch, scratch_cap);
    HeapFree(GetProcessHeap(), 0, scratch);
out_key:
    RegCloseKey(key);
    return rc;
}

DWORD pcns_config_read(pcns_config *cfg)
{
    return read_values(HKEY_LOCAL_MACHINE, PCNS_REG_KEY, TRUE, cfg);
}

DWORD pcns_config_read_filter(pcns_config *cfg)
{
    return read_values(HKEY_LOCAL_MACHINE, PCNS_REG_KEY, FALSE, cfg);
}

BOOL pcns_config_filter_ready(const pcns_config *cfg)
{
    return (cfg->present & PCNS_CFG_FILTER_NEEDS) == PCNS_CFG_FILTER_NEEDS &&
           cfg->spool_dir_len != 0;
}
