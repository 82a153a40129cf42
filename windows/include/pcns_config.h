/* The registry key both binaries read: HKLM\SOFTWARE\pcns\Sender (windows/README.md).
 *
 * pcns_config_read() fills a pcns_config from the key with RegOpenKeyExW/RegQueryValueExW
 * (64-bit view); no CRT, so pcnsflt.dll and pcns-sender.exe share it. The filter needs only
 * the values marked F in README.md (pcns_config_filter_ready()). The sender writes the values
 * itself (RegSetValueExW with the PCNS_REG_* names below).
 *
 * The struct is large (about 12 KiB): allocate it (HeapAlloc) rather than putting it on a
 * thread's stack inside LSASS. Strings are stored NUL-terminated with their length beside
 * them; `present` and `invalid` say, per value (PCNS_CFG_* bits), whether the value exists and
 * whether it exists but could not be used (wrong type, too long, not UTF-16, bad hex...).
 */
#ifndef PCNS_CONFIG_H
#define PCNS_CONFIG_H

#include <windows.h>

#define PCNS_REG_KEY L"SOFTWARE\\pcns\\Sender"
#define PCNS_REG_URL L"Url"
#define PCNS_REG_SOURCE L"Source"
#define PCNS_REG_DOMAIN L"Domain"
#define PCNS_REG_DOMAIN_SID L"DomainSid"
#define PCNS_REG_RECIPIENT_KEY_ID L"RecipientKeyId"
#define PCNS_REG_RECIPIENT_PUBLIC_KEY L"RecipientPublicKey"
#define PCNS_REG_SECRET L"Secret"
#define PCNS_REG_SPOOL_DIR L"SpoolDir"
#define PCNS_REG_SERVER_CERT_SHA256 L"ServerCertSha256"
#define PCNS_REG_CLIENT_CERT_THUMBPRINT L"ClientCertThumbprint"
#define PCNS_REG_ALERT_AGE_SECONDS L"AlertAgeSeconds"
#define PCNS_REG_TIMEOUT_MS L"TimeoutMs"

#define PCNS_DEFAULT_SPOOL_DIR L"%ProgramData%\\pcns\\spool"
#define PCNS_DEFAULT_ALERT_AGE_SECONDS 3600
#define PCNS_DEFAULT_TIMEOUT_MS 10000

/* Capacities, in bytes of UTF-8 or WCHARs, each without the terminating NUL. */
#define PCNS_CFG_URL_MAX 2048       /* WCHARs */
#define PCNS_CFG_SPOOL_DIR_MAX 1024 /* WCHARs, after expanding %variables% */
#define PCNS_CFG_NAME_MAX 256       /* UTF-8 bytes: source, key id, domain, domain SID */
#define PCNS_CFG_SECRET_MAX 2048    /* bytes of the DPAPI blob */

/* Bits of pcns_config.present / .invalid */
#define PCNS_CFG_URL 0x0001u
#define PCNS_CFG_SOURCE 0x0002u
#define PCNS_CFG_DOMAIN 0x0004u
#define PCNS_CFG_DOMAIN_SID 0x0008u
#define PCNS_CFG_RECIPIENT_KEY_ID 0x0010u
#define PCNS_CFG_RECIPIENT_PUBLIC_KEY 0x0020u
#define PCNS_CFG_SECRET 0x0040u
#define PCNS_CFG_SPOOL_DIR 0x0080u
#define PCNS_CFG_SERVER_CERT_SHA256 0x0100u
#define PCNS_CFG_CLIENT_CERT_THUMBPRINT 0x0200u
#define PCNS_CFG_ALERT_AGE_SECONDS 0x0400u
#define PCNS_CFG_TIMEOUT_MS 0x0800u
/* What the filter needs (README.md, column F; SpoolDir has a default). */
#define PCNS_CFG_FILTER_NEEDS (PCNS_CFG_SOURCE | PCNS_CFG_RECIPIENT_KEY_ID | PCNS_CFG_RECIPIENT_PUBLIC_KEY)

typedef struct pcns_config {
    DWORD present; /* PCNS_CFG_* bits of the values found and usable */
    DWORD invalid; /* PCNS_CFG_* bits of the values found but not usable */

    WCHAR url[PCNS_CFG_URL_MAX + 1];
    DWORD url_len; /* WCHARs */

    char source[PCNS_CFG_NAME_MAX + 1]; /* UTF-8 */
    DWORD source_len;
    char domain[PCNS_CFG_NAME_MAX + 1]; /* UTF-8 */
    DWORD domain_len;
    char domain_sid[PCNS_CFG_NAME_MAX + 1]; /* ASCII "S-1-5-21-..." */
    DWORD domain_sid_len;
    char key_id[PCNS_CFG_NAME_MAX + 1]; /* UTF-8 */
    DWORD key_id_len;

    BYTE recipient_public_key[65]; /* 04 || X || Y, checked to be on P-256 */

    BYTE secret[PCNS_CFG_SECRET_MAX]; /* DPAPI-protected, as stored */
    DWORD secret_len;

    /* %variables% expanded; the default when the value is absent (present bit then clear). */
    WCHAR spool_dir[PCNS_CFG_SPOOL_DIR_MAX + 1];
    DWORD spool_dir_len; /* WCHARs, without a trailing backslash */

    BYTE server_cert_sha256[32]; /* from 64 hex digits */
    BYTE client_cert_thumbprint[20]; /* from 40 hex digits */

    DWORD alert_age_seconds; /* default PCNS_DEFAULT_ALERT_AGE_SECONDS */
    DWORD timeout_ms;        /* default PCNS_DEFAULT_TIMEOUT_MS */
} pcns_config;

/* Fill `cfg` from HKLM\SOFTWARE\pcns\Sender. ERROR_SUCCESS when the key could be opened
 * (whatever values it has: see cfg->present/invalid), ERROR_FILE_NOT_FOUND when there is no
 * key, another Win32 error when it could not be read. Defaults are filled in either way. */
DWORD pcns_config_read(pcns_config *cfg);

/* Only what the filter needs (Source, RecipientKeyId, RecipientPublicKey, SpoolDir): the
 * filter never reads the sender's secret into LSASS. Same results as pcns_config_read. */
DWORD pcns_config_read_filter(pcns_config *cfg);

/* TRUE when the filter has what it needs: Source, RecipientKeyId and a RecipientPublicKey of
 * 65 bytes that is a point on P-256, and a usable spool directory. */
BOOL pcns_config_filter_ready(const pcns_config *cfg);

/* TRUE when `path` (NUL-terminated, %variables% expanded) is absolute on a local drive:
 * "X:\..." or "\\?\X:\...". A UNC path (\\server\share, \\?\UNC\...), a device path
 * (\\.\...) or a relative one is not a SpoolDir: the filter writes there from inside LSASS,
 * which must not go to the network. */
BOOL pcns_spool_dir_is_local(const WCHAR *path);

/* Zero the struct (it holds the DPAPI blob of the secret). */
void pcns_config_clear(pcns_config *cfg);

#endif
