/* install.c: `pcns-sender.exe install` and `uninstall` (include/pcns_install.h): their options,
 * the checks before any step, and the order of the steps (src/install_*.c, install_internal.h).
 *
 * install, in this order, each step idempotent, stopping at the first failure:
 *   1. copy pcnsflt.dll to %SystemRoot%\System32 (a loaded copy is renamed aside first and
 *      deleted at the reboot);
 *   2. create the spool folder and its bad\ subfolder, DACL "D:P(A;OICI;FA;;;SY)" (SYSTEM only);
 *   3. register the event source "pcns" (EventMessageFile = this exe, TypesSupported 7);
 *   4. create or update the pcns-sender service (auto start, LocalSystem, restart on failure);
 *   5. append "pcnsflt" to LSA's Notification Packages, last, so a failure before it leaves LSA as
 *      it was; every existing entry and its order are kept, a duplicate is never added.
 * uninstall undoes them in this order: service, Notification Packages, event source, DLL, spool;
 * it attempts every step even after one fails, and keeps HKLM\SOFTWARE\pcns\Sender unless
 * --purge, and a spool that still holds changes (it says how many).
 *
 * Runs as an elevated administrator (by hand) or as SYSTEM (the MSI's deferred custom action).
 * The spool is SYSTEM-only, so an administrator reaches it through SeBackupPrivilege and
 * SeRestorePrivilege and handles opened with FILE_FLAG_BACKUP_SEMANTICS.
 */
#include "install_internal.h"

#define SENDER_KEY PCNS_REG_KEY
#define PCNS_KEY L"SOFTWARE\\pcns"

/* Backup and restore privileges let an administrator list and delete inside the SYSTEM-only spool.
 * Best effort: without them (SYSTEM has them; a non-elevated user does not) the later opens fail
 * and report why. */
void pcns_enable_backup_privileges(void)
{
    static const wchar_t *names[] = {SE_BACKUP_NAME, SE_RESTORE_NAME};
    HANDLE token = NULL;
    size_t i;

    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY, &token))
        return;
    for (i = 0; i < ARRAYSIZE(names); i++) {
        TOKEN_PRIVILEGES tp;
        tp.PrivilegeCount = 1;
        tp.Privileges[0].Attributes = SE_PRIVILEGE_ENABLED;
        if (!LookupPrivilegeValueW(NULL, names[i], &tp.Privileges[0].Luid))
            continue;
        if (!AdjustTokenPrivileges(token, FALSE, &tp, sizeof(tp), NULL, NULL))
            continue; /* ERROR_NOT_ALL_ASSIGNED comes as success with a LastError: fine */
    }
    if (!CloseHandle(token))
        return;
}

static BOOL is_admin(void)
{
    SID_IDENTIFIER_AUTHORITY nt = {SECURITY_NT_AUTHORITY};
    PSID admins = NULL;
    BOOL member = FALSE;

    if (!AllocateAndInitializeSid(&nt, 2, SECURITY_BUILTIN_DOMAIN_RID, DOMAIN_ALIAS_RID_ADMINS, 0,
                                  0, 0, 0, 0, 0, &admins))
        return FALSE;
    if (!CheckTokenMembership(NULL, admins, &member))
        member = FALSE;
    FreeSid(admins);
    return member;
}

static int need_admin(void)
{
    if (is_admin())
        return 0;
    inst_complain(L"pcns-sender: run this from an elevated (\"Run as administrator\") prompt on "
                  L"the domain controller\n");
    return 1;
}

/* The directory this exe is in, with a trailing backslash; and the exe's own path. */
static int exe_paths(wchar_t *exe, wchar_t *dir)
{
    DWORD n = GetModuleFileNameW(NULL, exe, PATH_CAP);
    wchar_t *slash;

    if (n == 0)
        return inst_fail(L"GetModuleFileNameW", GetLastError());
    if (n >= PATH_CAP)
        return inst_fail(L"the path of pcns-sender.exe", ERROR_FILENAME_EXCED_RANGE);
    memcpy(dir, exe, (n + 1) * sizeof(wchar_t));
    slash = wcsrchr(dir, L'\\');
    if (slash == NULL)
        return inst_fail(L"the path of pcns-sender.exe", ERROR_BAD_PATHNAME);
    slash[1] = L'\0';
    return 0;
}

static int purge_config(BOOL purge)
{
    LSTATUS st;

    if (!purge) {
        if (RegGetValueW(HKEY_LOCAL_MACHINE, SENDER_KEY, L"Source", RRF_RT_ANY, NULL, NULL,
                         NULL) == ERROR_SUCCESS)
            inst_say(L"configuration:   HKLM\\%ls kept (--purge deletes it)\n", SENDER_KEY);
        return 0;
    }
    st = RegDeleteTreeW(HKEY_LOCAL_MACHINE, SENDER_KEY);
    if (st != ERROR_SUCCESS && st != ERROR_FILE_NOT_FOUND)
        return inst_fail(L"deleting HKLM\\" SENDER_KEY, (DWORD)st);
    st = RegDeleteKeyW(HKEY_LOCAL_MACHINE, PCNS_KEY); /* only when nothing else is left in it */
    if (st != ERROR_SUCCESS && st != ERROR_FILE_NOT_FOUND && st != ERROR_ACCESS_DENIED)
        return inst_fail(L"deleting HKLM\\" PCNS_KEY, (DWORD)st);
    inst_say(L"configuration:   HKLM\\%ls deleted (the DPAPI-protected secret with it)\n",
             SENDER_KEY);
    return 0;
}

/* Where the options start: after the verb when the caller passed it (or the exe and the verb). */
static int first_option(int argc, wchar_t **argv, const wchar_t *verb)
{
    int i;
    for (i = 0; i < argc && i < 2; i++)
        if (argv[i] != NULL && _wcsicmp(argv[i], verb) == 0)
            return i + 1;
    return 0;
}

static void install_usage(void)
{
    inst_complain(
        L"usage: pcns-sender.exe install [--dll PATH] [--no-reboot-note]\n"
        L"  copies pcnsflt.dll (default: beside pcns-sender.exe) to System32, creates the\n"
        L"  spool, the event source and the pcns-sender service, and adds pcnsflt to LSA's\n"
        L"  Notification Packages. Run it elevated; running it again is safe.\n");
}

static void uninstall_usage(void)
{
    inst_complain(
        L"usage: pcns-sender.exe uninstall [--keep-spool] [--purge]\n"
        L"  deletes the pcns-sender service, removes pcnsflt from LSA's Notification\n"
        L"  Packages, the event source, and pcnsflt.dll (at the reboot when LSASS holds it).\n"
        L"  The spool is removed only when empty (--keep-spool keeps it anyway); --purge\n"
        L"  also deletes HKLM\\SOFTWARE\\pcns\\Sender.\n");
}

/* An argument the verb's loop did not take: --help or -h prints the usage and ends the verb with
 * 0; anything else is `unknown` (a format taking the argument), then the usage, and 2. */
static int option_end(const wchar_t *arg, const wchar_t *unknown, void (*usage)(void))
{
    if (wcscmp(arg, L"--help") == 0 || wcscmp(arg, L"-h") == 0) {
        usage();
        return 0;
    }
    inst_complain(unknown, arg);
    usage();
    return 2;
}

int pcns_install(int argc, wchar_t **argv)
{
    wchar_t exe[PATH_CAP], dir[PATH_CAP];
    const wchar_t *dll = NULL;
    BOOL reboot_note = TRUE;
    int i;

    for (i = first_option(argc, argv, L"install"); i < argc; i++) {
        if (wcscmp(argv[i], L"--dll") == 0 && i + 1 < argc) {
            dll = argv[++i];
        } else if (wcscmp(argv[i], L"--no-reboot-note") == 0) {
            reboot_note = FALSE;
        } else {
            return option_end(argv[i], L"pcns-sender install: unknown or incomplete option %ls\n",
                              install_usage);
        }
    }
    if (need_admin() || exe_paths(exe, dir))
        return 1;
    pcns_enable_backup_privileges();
    if (install_dll(dll, dir) || install_spool() || install_event_source(exe) ||
        install_service(exe) || packages_edit(TRUE)) {
        inst_complain(L"pcns-sender install: stopped; fix the cause above and run it again\n");
        return 1;
    }
    if (!inst_sender_configured())
        inst_say(L"next:            pcns-sender.exe configure --url ... --source ... "
                 L"--secret-file ... --recipient-key-id ... --recipient-key-file ...\n");
    if (reboot_note)
        inst_say(L"reboot this domain controller for LSA to load pcnsflt.dll\n");
    return 0;
}

int pcns_uninstall(int argc, wchar_t **argv)
{
    BOOL keep_spool = FALSE, purge = FALSE;
    int i, failed = 0;

    for (i = first_option(argc, argv, L"uninstall"); i < argc; i++) {
        if (wcscmp(argv[i], L"--keep-spool") == 0) {
            keep_spool = TRUE;
        } else if (wcscmp(argv[i], L"--purge") == 0) {
            purge = TRUE;
        } else {
            return option_end(argv[i], L"pcns-sender uninstall: unknown option %ls\n",
                              uninstall_usage);
        }
    }
    if (need_admin())
        return 1;
    pcns_enable_backup_privileges();
    /* every step is tried, so one failure does not leave the rest behind */
    failed |= uninstall_service();
    failed |= packages_edit(FALSE);
    failed |= uninstall_event_source();
    failed |= uninstall_dll();
    failed |= uninstall_spool(keep_spool);
    failed |= purge_config(purge);
    if (failed) {
        inst_complain(
            L"pcns-sender uninstall: a step failed (above); fix it and run uninstall again\n");
        return 1;
    }
    inst_say(L"reboot this domain controller to unload pcnsflt.dll from LSASS\n");
    return 0;
}
