/* install_dll.c: step 1, pcnsflt.dll in %SystemRoot%\System32 (install_internal.h). A copy that
 * LSASS has loaded is renamed aside and deleted at the reboot, on install and on uninstall.
 */
#include "install_internal.h"

#define FILE_MAX_BYTES (64u * 1024u * 1024u)

/* TRUE when both names are the same file (the MSI put the DLL in System32 already). */
static BOOL same_file(const wchar_t *a, const wchar_t *b)
{
    BY_HANDLE_FILE_INFORMATION ia, ib;
    HANDLE ha = inst_open_any(a, FILE_READ_ATTRIBUTES), hb = INVALID_HANDLE_VALUE;
    BOOL same = FALSE;

    if (ha == INVALID_HANDLE_VALUE)
        goto cleanup;
    hb = inst_open_any(b, FILE_READ_ATTRIBUTES);
    if (hb == INVALID_HANDLE_VALUE)
        goto cleanup;
    if (!GetFileInformationByHandle(ha, &ia) || !GetFileInformationByHandle(hb, &ib))
        goto cleanup;
    same = ia.dwVolumeSerialNumber == ib.dwVolumeSerialNumber &&
           ia.nFileIndexHigh == ib.nFileIndexHigh && ia.nFileIndexLow == ib.nFileIndexLow;
cleanup:
    if (hb != INVALID_HANDLE_VALUE)
        CloseHandle(hb);
    if (ha != INVALID_HANDLE_VALUE)
        CloseHandle(ha);
    return same;
}

static DWORD read_file(const wchar_t *path, BYTE **data, DWORD *len)
{
    HANDLE h = CreateFileW(path, GENERIC_READ,
                           FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                           OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    LARGE_INTEGER size;
    DWORD err = ERROR_SUCCESS, got = 0;
    BYTE *buf = NULL;

    *data = NULL;
    *len = 0;
    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!GetFileSizeEx(h, &size)) {
        err = GetLastError();
        goto cleanup;
    }
    if (size.QuadPart < 0 || size.QuadPart > FILE_MAX_BYTES) {
        err = ERROR_FILE_TOO_LARGE;
        goto cleanup;
    }
    buf = HeapAlloc(GetProcessHeap(), 0, (SIZE_T)size.QuadPart + 1);
    if (buf == NULL) {
        err = ERROR_NOT_ENOUGH_MEMORY;
        goto cleanup;
    }
    if (!ReadFile(h, buf, (DWORD)size.QuadPart, &got, NULL)) {
        err = GetLastError();
        goto cleanup;
    }
    if (got != (DWORD)size.QuadPart) {
        err = ERROR_HANDLE_EOF;
        goto cleanup;
    }
    *data = buf;
    *len = got;
    buf = NULL;
cleanup:
    if (buf != NULL)
        HeapFree(GetProcessHeap(), 0, buf);
    CloseHandle(h);
    return err;
}

/* TRUE when both files hold the same bytes (a rerun of install: nothing to copy). */
static BOOL same_content(const wchar_t *a, const wchar_t *b)
{
    BYTE *da = NULL, *db = NULL;
    DWORD la = 0, lb = 0;
    BOOL same = FALSE;

    if (read_file(a, &da, &la) != ERROR_SUCCESS || read_file(b, &db, &lb) != ERROR_SUCCESS)
        goto cleanup;
    same = la == lb && memcmp(da, db, la) == 0;
cleanup:
    if (db != NULL)
        HeapFree(GetProcessHeap(), 0, db);
    if (da != NULL)
        HeapFree(GetProcessHeap(), 0, da);
    return same;
}

static int dll_target(wchar_t *dst)
{
    wchar_t sys[PATH_CAP];
    UINT n = GetSystemDirectoryW(sys, PATH_CAP);

    if (n == 0)
        return inst_fail(L"GetSystemDirectoryW", GetLastError());
    if (n >= PATH_CAP || !inst_fmt(dst, PATH_CAP, L"%ls\\%ls", sys, PCNS_FILTER_DLL))
        return inst_fail(L"the System32 path", ERROR_FILENAME_EXCED_RANGE);
    return 0;
}

/* The errors a file held open or mapped by another process (LSASS) gives. */
static BOOL in_use(DWORD err)
{
    return err == ERROR_SHARING_VIOLATION || err == ERROR_ACCESS_DENIED ||
           err == ERROR_USER_MAPPED_FILE;
}

/* A loaded DLL can be neither overwritten nor deleted, but it can be renamed. Renamed aside, with
 * the renamed file deleted at the reboot, the name is free at once and the pending deletion can
 * never hit a newer copy (the way Windows Installer treats files in use). */
static int move_aside(const wchar_t *dst, wchar_t *aside)
{
    ULONGLONG now = GetTickCount64();

    if (!inst_fmt(aside, PATH_CAP, L"%ls.pcns-old-%08lx", dst, (unsigned long)(now & 0xffffffffu)))
        return inst_fail(L"the renamed DLL's path", ERROR_FILENAME_EXCED_RANGE);
    if (!MoveFileExW(dst, aside, 0))
        return inst_fail(L"renaming the loaded pcnsflt.dll aside", GetLastError());
    if (!MoveFileExW(aside, NULL, MOVEFILE_DELAY_UNTIL_REBOOT))
        inst_complain(L"pcns-sender: %ls could not be scheduled for deletion at the reboot "
                      L"(error %lu); delete it after the reboot\n",
                      aside, (unsigned long)GetLastError());
    return 0;
}

int install_dll(const wchar_t *src_opt, const wchar_t *exe_dir)
{
    wchar_t given[PATH_CAP], src[PATH_CAP], dst[PATH_CAP], aside[PATH_CAP];
    DWORD n, attrs, err;

    if (src_opt != NULL) {
        if (!inst_fmt(given, PATH_CAP, L"%ls", src_opt))
            return inst_fail(L"--dll", ERROR_FILENAME_EXCED_RANGE);
    } else if (!inst_fmt(given, PATH_CAP, L"%ls%ls", exe_dir, PCNS_FILTER_DLL)) {
        return inst_fail(L"the path of pcnsflt.dll", ERROR_FILENAME_EXCED_RANGE);
    }
    n = GetFullPathNameW(given, PATH_CAP, src, NULL);
    if (n == 0)
        return inst_fail(L"GetFullPathNameW(--dll)", GetLastError());
    if (n >= PATH_CAP)
        return inst_fail(L"--dll", ERROR_FILENAME_EXCED_RANGE);
    attrs = GetFileAttributesW(src);
    if (attrs == INVALID_FILE_ATTRIBUTES || (attrs & FILE_ATTRIBUTE_DIRECTORY)) {
        inst_complain(L"pcns-sender: %ls not found; put pcnsflt.dll beside pcns-sender.exe or "
                      L"name it with --dll PATH\n", src);
        return 1;
    }
    if (dll_target(dst))
        return 1;
    if (same_file(src, dst)) {
        inst_say(L"filter DLL:      %ls (already in place)\n", dst);
        return 0;
    }
    if (GetFileAttributesW(dst) != INVALID_FILE_ATTRIBUTES && same_content(src, dst)) {
        inst_say(L"filter DLL:      %ls (up to date)\n", dst);
        return 0;
    }
    if (CopyFileW(src, dst, FALSE)) {
        inst_say(L"filter DLL:      copied %ls to %ls\n", src, dst);
        return 0;
    }
    err = GetLastError();
    if (!in_use(err))
        return inst_fail(L"copying pcnsflt.dll to System32", err);
    /* LSASS has the old one loaded: rename it aside, then copy the new one to the free name. */
    if (move_aside(dst, aside))
        return 1;
    if (!CopyFileW(src, dst, FALSE)) {
        err = GetLastError();
        if (!MoveFileExW(aside, dst, 0))
            inst_complain(L"pcns-sender: and %ls could not be renamed back to %ls (error %lu)\n",
                          aside, dst, (unsigned long)GetLastError());
        return inst_fail(L"copying pcnsflt.dll to System32", err);
    }
    inst_say(L"filter DLL:      copied %ls to %ls; the copy LSASS has loaded was renamed to %ls "
             L"and is deleted at the reboot\n",
             src, dst, aside);
    return 0;
}

int uninstall_dll(void)
{
    wchar_t dst[PATH_CAP], aside[PATH_CAP];
    DWORD err;

    if (dll_target(dst))
        return 1;
    if (DeleteFileW(dst)) {
        inst_say(L"filter DLL:      deleted %ls\n", dst);
        return 0;
    }
    err = GetLastError();
    if (err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND) {
        inst_say(L"filter DLL:      %ls was not there\n", dst);
        return 0;
    }
    if (!in_use(err))
        return inst_fail(L"deleting pcnsflt.dll", err);
    /* LSASS holds it until the reboot: rename it aside (deleted at the reboot), or, when even
     * that fails, have the name itself deleted at the reboot. */
    if (move_aside(dst, aside) == 0) {
        inst_say(L"filter DLL:      %ls is in use; renamed to %ls, deleted at the reboot\n", dst,
                 aside);
        return 0;
    }
    if (!MoveFileExW(dst, NULL, MOVEFILE_DELAY_UNTIL_REBOOT))
        return inst_fail(L"scheduling pcnsflt.dll's deletion for the reboot", GetLastError());
    inst_say(L"filter DLL:      %ls is in use; it is deleted at the reboot\n", dst);
    return 0;
}
