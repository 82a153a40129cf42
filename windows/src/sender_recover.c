/* pcns-sender: spool records the filter left as temp files (windows/README.md, "The spool
 * record").
 *
 * pcns_spool_write() writes <name>.pcs.tmp, flushes it and renames it to <name>.pcs. When LSASS
 * or the machine dies between the flush and the rename, a complete record stays as a temp file,
 * which the delivery walk (*.pcs only) never sees; a crash mid-write leaves a partial one. At
 * the start of each delivery pass, every temp file with a record's name whose last write is
 * more than RECOVER_MIN_AGE_S ago (a younger one may be a write in progress) is read back and
 * checked as any record is: a valid one is renamed to its record name and delivered in its
 * turn, one that is not is handed to the caller, who moves it to bad\ (event 3002). */
#include "sender_internal.h"
#include "pcns_spool.h"

#include <string.h>
#include <wchar.h>

#define TMP_EXT_LEN 4 /* wcslen(PCNS_SPOOL_TMP_EXT) */

/* TRUE when `name` is a record's name followed by PCNS_SPOOL_TMP_EXT; `record` gets the
 * record's name (PCNS_SPOOL_NAME_LEN + 1 WCHARs). */
static BOOL temp_record_name(const wchar_t *name, wchar_t *record)
{
    if (wcslen(name) != PCNS_SPOOL_NAME_LEN + TMP_EXT_LEN ||
        _wcsicmp(name + PCNS_SPOOL_NAME_LEN, PCNS_SPOOL_TMP_EXT) != 0)
        return FALSE;
    memcpy(record, name, PCNS_SPOOL_NAME_LEN * sizeof(wchar_t));
    record[PCNS_SPOOL_NAME_LEN] = 0;
    return pcns_spool_parse_name(record, NULL);
}

static ULONGLONG filetime_u64(FILETIME ft)
{
    return (ULONGLONG)ft.dwHighDateTime << 32 | ft.dwLowDateTime;
}

/* One stale temp file: TRUE when it was renamed to its record name. */
static BOOL recover_one(const wchar_t *dir, const wchar_t *name, const wchar_t *record,
                        recover_bad_fn bad, void *ctx)
{
    wchar_t path[MAX_PATH + 96], final_path[MAX_PATH + 96], reason[256];
    sender_record r;
    BOOL io_error = FALSE;
    DWORD e;
    int n1, n2;

    n1 = swprintf(path, ARRAYSIZE(path), L"%ls\\%ls", dir, name);
    n2 = swprintf(final_path, ARRAYSIZE(final_path), L"%ls\\%ls", dir, record);
    if (n1 < 0 || n2 < 0)
        return FALSE; /* cannot happen with a SpoolDir config_load() accepted */
    reason[0] = 0;
    if (!record_load(path, &r, &io_error, reason, ARRAYSIZE(reason))) {
        /* Not readable at all (still open, gone): left for the next pass. */
        if (!io_error)
            bad(ctx, path, name, reason);
        return FALSE;
    }
    record_free(&r);
    /* No MOVEFILE_REPLACE_EXISTING: a record of that name is never overwritten. */
    if (MoveFileExW(path, final_path, MOVEFILE_WRITE_THROUGH)) {
        if (g_console)
            say(stderr,
                L"pcns-sender: recovered spool record %ls (a complete record left as %ls by an "
                L"interrupted write)\n",
                record, name);
        return TRUE;
    }
    e = GetLastError();
    if (e == ERROR_ALREADY_EXISTS || e == ERROR_FILE_EXISTS)
        bad(ctx, path, name, L"complete, but a record of the same name is already spooled");
    else if (e != ERROR_FILE_NOT_FOUND && g_console)
        say(stderr, L"pcns-sender: spool record %ls left as %ls cannot be renamed (error %lu)\n",
            record, name, e);
    return FALSE;
}

ULONG spool_recover_temps(const wchar_t *dir, recover_bad_fn bad, void *ctx)
{
    wchar_t pattern[MAX_PATH + 16], record[PCNS_SPOOL_NAME_LEN + 1];
    WIN32_FIND_DATAW fd;
    FILETIME now_ft;
    ULONGLONG now, wrote;
    ULONG recovered = 0;
    HANDLE h;

    if (swprintf(pattern, ARRAYSIZE(pattern), L"%ls\\*%ls%ls", dir, PCNS_SPOOL_EXT,
                 PCNS_SPOOL_TMP_EXT) < 0)
        return 0;
    GetSystemTimeAsFileTime(&now_ft);
    now = filetime_u64(now_ft);
    h = FindFirstFileExW(pattern, FindExInfoBasic, &fd, FindExSearchNameMatch, NULL, 0);
    if (h == INVALID_HANDLE_VALUE)
        return 0; /* none, or the spool cannot be listed: the delivery walk reports that */
    do {
        if (fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY ||
            !temp_record_name(fd.cFileName, record))
            continue;
        wrote = filetime_u64(fd.ftLastWriteTime);
        if (wrote > now || now - wrote <= RECOVER_MIN_AGE_S * 10000000ULL)
            continue; /* maybe a write in progress (or a clock set back): not yet */
        if (recover_one(dir, fd.cFileName, record, bad, ctx))
            recovered++;
    } while (FindNextFileW(h, &fd));
    FindClose(h);
    return recovered;
}
