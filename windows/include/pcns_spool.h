/* The spool record, version 1 (windows/README.md, "The spool record").
 *
 * One file per change in SpoolDir, named <changed_at 16 hex>-<counter 8 hex>-<random 8 hex>.pcs
 * (lower-case hex), so an ordinal sort of the names is change order (and, within one
 * process, creation order: the counter is process-wide and interlocked). Written as
 * <name>.pcs.tmp, flushed (FlushFileBuffers), closed, then renamed with
 * MoveFileExW(MOVEFILE_WRITE_THROUGH). All integers little-endian:
 *
 *   0   8  magic "PCNSSPL\0"
 *   8   2  version = 1
 *   10  2  flags = 0
 *   12  4  rid
 *   16  8  changed_at (FILETIME, UTC)
 *   24     webhook_id, source, user, key_id, sealed: each u32 length + bytes
 *   end-32 SHA-256 of every byte before it
 *
 * No CRT (shared by pcnsflt.dll and pcns-sender.exe). Listing: pcns_spool_oldest() finds the
 * oldest record (smallest name) without allocating; the sender calls it after each delivery.
 * Moving bad records to SpoolDir\bad\ and the event 3002 are the sender's.
 */
#ifndef PCNS_SPOOL_H
#define PCNS_SPOOL_H

#include <windows.h>

#ifndef PCNS_BYTES_DEFINED
#define PCNS_BYTES_DEFINED
/* A counted byte string (not NUL-terminated). */
typedef struct pcns_bytes {
    const BYTE *data;
    ULONG len;
} pcns_bytes;
#endif

#define PCNS_SPOOL_MAGIC "PCNSSPL\0"
#define PCNS_SPOOL_MAGIC_LEN 8
#define PCNS_SPOOL_VERSION 1
#define PCNS_SPOOL_HEADER_LEN 24
#define PCNS_SPOOL_HASH_LEN 32
#define PCNS_SPOOL_FIELDS 5
#define PCNS_SPOOL_FIELD_MAX 4096  /* bytes, each field */
#define PCNS_SPOOL_FILE_MAX 32768  /* bytes, the whole record */
#define PCNS_SPOOL_MIN_LEN (PCNS_SPOOL_HEADER_LEN + 4 * PCNS_SPOOL_FIELDS + PCNS_SPOOL_HASH_LEN)
#define PCNS_WEBHOOK_ID_LEN 37     /* "pcns_" + 32 lower-case hex */

#define PCNS_SPOOL_EXT L".pcs"
#define PCNS_SPOOL_TMP_EXT L".tmp"
#define PCNS_SPOOL_PATTERN L"*.pcs"
#define PCNS_SPOOL_NAME_LEN 38     /* WCHARs of a name with ".pcs", without NUL */

/* Why a record is refused (pcns_spool_decode / pcns_spool_read). */
#define PCNS_SPOOL_OK 0
#define PCNS_SPOOL_TOO_SHORT 1
#define PCNS_SPOOL_TOO_LARGE 2
#define PCNS_SPOOL_BAD_MAGIC 3
#define PCNS_SPOOL_BAD_VERSION 4
#define PCNS_SPOOL_BAD_LENGTH 5   /* a field over PCNS_SPOOL_FIELD_MAX or past the end */
#define PCNS_SPOOL_BAD_CHECKSUM 6
#define PCNS_SPOOL_BAD_FIELD 7    /* webhook_id not "pcns_" + 32 hex, sealed too short */

typedef struct pcns_spool_record {
    USHORT version; /* PCNS_SPOOL_VERSION when decoded; ignored when encoding */
    USHORT flags;   /* 0 */
    ULONG rid;
    ULONGLONG changed_at; /* FILETIME as 100 ns since 1601, UTC */
    pcns_bytes webhook_id, source, user, key_id, sealed;
} pcns_spool_record;

/* Bytes the encoding of `rec` takes, or 0 when a field is too long or the total is. */
ULONG pcns_spool_encoded_len(const pcns_spool_record *rec);

/* Encode `rec` (with its SHA-256) into `out`. ERROR_SUCCESS, ERROR_INVALID_PARAMETER for a
 * field over PCNS_SPOOL_FIELD_MAX or a total over PCNS_SPOOL_FILE_MAX, ERROR_INSUFFICIENT_BUFFER,
 * or ERROR_INTERNAL_ERROR when CNG failed. */
DWORD pcns_spool_encode(const pcns_spool_record *rec, BYTE *out, ULONG out_cap, ULONG *out_len);

/* Check and parse `len` bytes at `buf`; the fields of `*rec` point into `buf`. ERROR_SUCCESS,
 * ERROR_INVALID_DATA with `*problem` (PCNS_SPOOL_*) set, or ERROR_INTERNAL_ERROR (CNG). */
DWORD pcns_spool_decode(const BYTE *buf, ULONG len, pcns_spool_record *rec, int *problem);

/* A text for a PCNS_SPOOL_* problem, for event 3002. */
const WCHAR *pcns_spool_problem_text(int problem);

/* Write `rec` durably as a new file in `dir` (no trailing backslash). `name` (at least
 * PCNS_SPOOL_NAME_LEN + 1 WCHARs, may be NULL) gets the file's name. On failure nothing is left
 * behind (the .tmp is deleted), `*step` (may be NULL) names what failed ("encode", "random",
 * "create", "write", "flush", "rename") and the Win32 error is returned. */
DWORD pcns_spool_write(const WCHAR *dir, const pcns_spool_record *rec, WCHAR *name,
                       const WCHAR **step);

/* Read and check the record at `path` into `buf` (PCNS_SPOOL_FILE_MAX bytes suffice); as
 * pcns_spool_decode, plus the file's own errors (ERROR_FILE_NOT_FOUND...). A file over
 * PCNS_SPOOL_FILE_MAX is ERROR_INVALID_DATA with PCNS_SPOOL_TOO_LARGE. */
DWORD pcns_spool_read(const WCHAR *path, BYTE *buf, ULONG cap, ULONG *len,
                      pcns_spool_record *rec, int *problem);

/* TRUE when `name` has the shape of a record's file name ("....pcs", lower-case hex); then
 * `*changed_at` (may be NULL) gets the time in it. */
BOOL pcns_spool_parse_name(const WCHAR *name, ULONGLONG *changed_at);

/* The oldest record in `dir`: its name into `name` (PCNS_SPOOL_NAME_LEN + 1 WCHARs) and the
 * number of records into `*count` (may be NULL). ERROR_SUCCESS, ERROR_NO_MORE_FILES when there
 * is none, or the error of FindFirstFileExW. Files whose names do not have the shape are
 * ignored (.tmp files in particular). */
DWORD pcns_spool_oldest(const WCHAR *dir, WCHAR *name, ULONG *count);

#endif
