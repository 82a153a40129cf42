/* install_spool.c: step 2, the spool folder and its bad\ subfolder, SYSTEM only
 * (install_internal.h). Uninstall removes them only when empty, and says what it kept.
 */
#include "install_internal.h"

#include <sddl.h>

#define SPOOL_SDDL L"D:P(A;OICI;FA;;;SY)"

/* The spool folder, as the filter and the sender find it: SpoolDir, or %ProgramData%\pcns\spool. */
static int spool_path(wchar_t *out, BOOL *is_default)
{
    pcns_config *cfg = inst_config_load();
    int rc = 1;

    if (cfg == NULL)
        return 1;
    if (cfg->invalid & PCNS_CFG_SPOOL_DIR) {
        inst_complain(L"pcns-sender: HKLM\\" PCNS_REG_KEY L"\\" PCNS_REG_SPOOL_DIR
                      L" is set but not usable (type, length or %%variables%%); fix it with "
                      L"pcns-sender.exe configure --spool\n");
        goto cleanup;
    }
    if (cfg->spool_dir_len == 0 || cfg->spool_dir_len >= PATH_CAP || cfg->spool_dir[0] == L'%') {
        inst_fail(L"the spool folder (is %ProgramData% set?)", ERROR_BAD_PATHNAME);
        goto cleanup;
    }
    memcpy(out, cfg->spool_dir, (cfg->spool_dir_len + 1) * sizeof(wchar_t));
    *is_default = !(cfg->present & PCNS_CFG_SPOOL_DIR);
    rc = 0;
cleanup:
    inst_config_free(cfg);
    return rc;
}

/* Whether `path` is a folder, asked with backup semantics: an administrator may not read the
 * attributes of a SYSTEM-only folder otherwise. */
static BOOL is_dir(const wchar_t *path)
{
    BY_HANDLE_FILE_INFORMATION info;
    HANDLE h = inst_open_any(path, FILE_READ_ATTRIBUTES);
    BOOL dir = FALSE;

    if (h == INVALID_HANDLE_VALUE)
        return FALSE;
    if (GetFileInformationByHandle(h, &info))
        dir = (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) != 0;
    CloseHandle(h);
    return dir;
}

/* Create every missing folder of `path` (its parents inherit their ACLs as usual). */
static int make_dirs(const wchar_t *path)
{
    wchar_t buf[PATH_CAP];
    size_t i, len = wcslen(path);
    DWORD err;

    if (len == 0 || len >= PATH_CAP)
        return inst_fail(L"the spool path", ERROR_BAD_PATHNAME);
    memcpy(buf, path, (len + 1) * sizeof(wchar_t));
    /* start after "C:\" or "\\server\share\" */
    i = 0;
    if (len >= 2 && buf[0] == L'\\' && buf[1] == L'\\') {
        int seps = 0;
        for (i = 2; i < len && seps < 2; i++)
            if (buf[i] == L'\\')
                seps++;
    } else if (len >= 3 && buf[1] == L':') {
        i = 3;
    }
    for (; i <= len; i++) {
        if (buf[i] != L'\\' && buf[i] != L'/' && buf[i] != L'\0')
            continue;
        if (i == 0 || buf[i - 1] == L'\\' || buf[i - 1] == L'/')
            continue;
        buf[i] = L'\0';
        if (!is_dir(buf) && !CreateDirectoryW(buf, NULL)) {
            err = GetLastError();
            if (err != ERROR_ALREADY_EXISTS)
                return inst_fail(buf, err);
        }
        if (i < len)
            buf[i] = path[i];
    }
    return 0;
}

/* Set a protected DACL from SDDL on a folder, and read it back as SDDL into `now`. */
static int protect_dir(const wchar_t *path, const wchar_t *sddl, wchar_t *now, size_t cap)
{
    PSECURITY_DESCRIPTOR sd = NULL, got = NULL;
    wchar_t *text = NULL;
    HANDLE h = INVALID_HANDLE_VALUE;
    DWORD need = 0;
    int rc = 1;

    now[0] = L'\0';
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, NULL))
        return inst_fail(L"ConvertStringSecurityDescriptorToSecurityDescriptorW", GetLastError());
    h = inst_open_any(path, READ_CONTROL | WRITE_DAC);
    if (h == INVALID_HANDLE_VALUE) {
        inst_fail(path, GetLastError());
        goto cleanup;
    }
    /* The kernel call, not SetSecurityInfo: it sets this folder's DACL without walking its
     * children (which an administrator may no longer open), as WireGuard's data directory does. */
    if (!SetKernelObjectSecurity(h, DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                                 sd)) {
        inst_fail(L"setting the spool folder's DACL", GetLastError());
        goto cleanup;
    }
    if (GetKernelObjectSecurity(h, DACL_SECURITY_INFORMATION, NULL, 0, &need) ||
        GetLastError() != ERROR_INSUFFICIENT_BUFFER) {
        inst_fail(L"reading the spool folder's DACL back", GetLastError());
        goto cleanup;
    }
    got = HeapAlloc(GetProcessHeap(), 0, need);
    if (got == NULL) {
        inst_fail(L"reading the spool folder's DACL back", ERROR_NOT_ENOUGH_MEMORY);
        goto cleanup;
    }
    if (!GetKernelObjectSecurity(h, DACL_SECURITY_INFORMATION, got, need, &need)) {
        inst_fail(L"reading the spool folder's DACL back", GetLastError());
        goto cleanup;
    }
    if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(got, SDDL_REVISION_1,
                                                              DACL_SECURITY_INFORMATION, &text,
                                                              NULL)) {
        inst_fail(L"ConvertSecurityDescriptorToStringSecurityDescriptorW", GetLastError());
        goto cleanup;
    }
    if (!inst_fmt(now, cap, L"%ls", text))
        now[0] = L'\0';
    rc = 0;
cleanup:
    if (text != NULL)
        LocalFree(text);
    if (got != NULL)
        HeapFree(GetProcessHeap(), 0, got);
    if (h != INVALID_HANDLE_VALUE)
        CloseHandle(h);
    LocalFree(sd);
    return rc;
}

int install_spool(void)
{
    wchar_t spool[PATH_CAP], bad[PATH_CAP], sddl[256];
    BOOL is_default = FALSE;

    if (spool_path(spool, &is_default))
        return 1;
    if (!inst_fmt(bad, PATH_CAP, L"%ls\\bad", spool))
        return inst_fail(L"the spool path", ERROR_FILENAME_EXCED_RANGE);
    /* Both exist before either is closed to administrators, so a first install never has to
     * create anything inside a SYSTEM-only folder. */
    if (make_dirs(spool) || make_dirs(bad))
        return 1;
    if (protect_dir(bad, SPOOL_SDDL, sddl, ARRAYSIZE(sddl)))
        return 1;
    if (protect_dir(spool, SPOOL_SDDL, sddl, ARRAYSIZE(sddl)))
        return 1;
    inst_say(L"spool:           %ls and bad\\, DACL %ls\n", spool, sddl);
    return 0;
}

struct spool_count {
    DWORD records; /* *.pcs: changes waiting */
    DWORD bad;     /* anything in bad\ */
    DWORD other;   /* *.tmp and the like */
};

static DWORD count_dir(const wchar_t *dir, BOOL in_bad, struct spool_count *c)
{
    /* DWORD-aligned, as FILE_ID_BOTH_DIR_INFO needs */
    DWORD buf[16 * 1024 / sizeof(DWORD)];
    HANDLE h = inst_open_any(dir, FILE_LIST_DIRECTORY | SYNCHRONIZE);
    DWORD err = ERROR_SUCCESS;

    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    for (;;) {
        FILE_ID_BOTH_DIR_INFO *e = (FILE_ID_BOTH_DIR_INFO *)buf;
        if (!GetFileInformationByHandleEx(h, FileIdBothDirectoryInfo, buf, sizeof(buf))) {
            err = GetLastError();
            if (err == ERROR_NO_MORE_FILES)
                err = ERROR_SUCCESS;
            break;
        }
        for (;;) {
            const wchar_t *name = e->FileName;
            int len = (int)(e->FileNameLength / sizeof(wchar_t));
            BOOL dot = (len == 1 && name[0] == L'.') ||
                       (len == 2 && name[0] == L'.' && name[1] == L'.');
            if (dot) {
                /* . and .. */
            } else if (e->FileAttributes & FILE_ATTRIBUTE_DIRECTORY) {
                if (!in_bad && inst_same_name(name, len, L"bad")) {
                    wchar_t sub[PATH_CAP];
                    if (!inst_fmt(sub, PATH_CAP, L"%ls\\bad", dir)) {
                        err = ERROR_FILENAME_EXCED_RANGE;
                        goto cleanup;
                    }
                    err = count_dir(sub, TRUE, c);
                    if (err != ERROR_SUCCESS)
                        goto cleanup;
                } else if (in_bad) {
                    c->bad++;
                } else {
                    c->other++;
                }
            } else if (in_bad) {
                c->bad++;
            } else if (len > 4 && inst_same_name(name + len - 4, 4, L".pcs")) {
                c->records++;
            } else {
                c->other++;
            }
            if (e->NextEntryOffset == 0)
                break;
            e = (FILE_ID_BOTH_DIR_INFO *)((BYTE *)e + e->NextEntryOffset);
        }
    }
cleanup:
    CloseHandle(h);
    return err;
}

static DWORD delete_dir(const wchar_t *dir)
{
    FILE_DISPOSITION_INFO del = {TRUE};
    HANDLE h = inst_open_any(dir, DELETE);
    DWORD err = ERROR_SUCCESS;

    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!SetFileInformationByHandle(h, FileDispositionInfo, &del, sizeof(del)))
        err = GetLastError();
    CloseHandle(h);
    return err;
}

int uninstall_spool(BOOL keep)
{
    wchar_t spool[PATH_CAP], bad[PATH_CAP], parent[PATH_CAP], *slash;
    struct spool_count c = {0, 0, 0};
    BOOL is_default = FALSE;
    DWORD err;

    if (spool_path(spool, &is_default))
        return 1;
    err = count_dir(spool, FALSE, &c);
    if (err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND) {
        inst_say(L"spool:           %ls was not there\n", spool);
        return 0;
    }
    if (err != ERROR_SUCCESS)
        return inst_fail(spool, err);
    if (c.records || c.bad || c.other) {
        inst_say(L"spool:           kept %ls: %lu %ls still waiting for delivery", spool,
                 (unsigned long)c.records, c.records == 1 ? L"change is" : L"changes are");
        if (c.bad)
            inst_say(L", %lu unreadable in bad\\", (unsigned long)c.bad);
        if (c.other)
            inst_say(L", %lu other %ls", (unsigned long)c.other, c.other == 1 ? L"file" : L"files");
        inst_say(L".\n                 Reinstall and the sender delivers them (the configuration "
                 L"is kept unless --purge); delete the folder yourself if they are not "
                 L"wanted.\n");
        return 0;
    }
    if (keep) {
        inst_say(L"spool:           kept %ls (empty; --keep-spool)\n", spool);
        return 0;
    }
    if (!inst_fmt(bad, PATH_CAP, L"%ls\\bad", spool))
        return inst_fail(L"the spool path", ERROR_FILENAME_EXCED_RANGE);
    err = delete_dir(bad);
    if (err != ERROR_SUCCESS && err != ERROR_FILE_NOT_FOUND && err != ERROR_PATH_NOT_FOUND)
        return inst_fail(bad, err);
    err = delete_dir(spool);
    if (err == ERROR_DIR_NOT_EMPTY) {
        inst_say(L"spool:           kept %ls: a change arrived while uninstalling\n", spool);
        return 0;
    }
    if (err != ERROR_SUCCESS)
        return inst_fail(spool, err);
    inst_say(L"spool:           removed %ls (it was empty)\n", spool);
    /* %ProgramData%\pcns too, when it is ours and now empty */
    if (is_default && inst_fmt(parent, PATH_CAP, L"%ls", spool) &&
        (slash = wcsrchr(parent, L'\\')) != NULL) {
        *slash = L'\0';
        if (!RemoveDirectoryW(parent)) {
            err = GetLastError();
            if (err != ERROR_DIR_NOT_EMPTY && err != ERROR_FILE_NOT_FOUND &&
                err != ERROR_PATH_NOT_FOUND)
                return inst_fail(parent, err);
        }
    }
    return 0;
}
