/* install_service.c: steps 3 and 4, the event source "pcns" in the Application log and the
 * pcns-sender service with its failure actions (install_internal.h).
 */
#include "install_internal.h"

#define EVENTLOG_KEY                                                                               \
    L"SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\" PCNS_EVENT_SOURCE
#define SERVICE_DESCRIPTION_TEXT                                                                   \
    L"Delivers the password changes that pcnsflt.dll captures on this domain controller to pcns, " \
    L"oldest first, signed; keeps them in the spool until pcns has accepted them."
#define STOP_WAIT_MS 30000u

/* ---- 3. the event source ----------------------------------------------------------------- */

int install_event_source(const wchar_t *exe)
{
    HKEY key = NULL;
    DWORD types = EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE;
    LSTATUS st;
    int rc = 1;

    st = RegCreateKeyExW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY, 0, NULL, 0, KEY_SET_VALUE, NULL, &key,
                         NULL);
    if (st != ERROR_SUCCESS)
        return inst_fail(L"creating HKLM\\" EVENTLOG_KEY, (DWORD)st);
    st = RegSetValueExW(key, L"EventMessageFile", 0, REG_EXPAND_SZ, (const BYTE *)exe,
                        (DWORD)((wcslen(exe) + 1) * sizeof(wchar_t)));
    if (st != ERROR_SUCCESS) {
        inst_fail(L"writing EventMessageFile", (DWORD)st);
        goto cleanup;
    }
    st = RegSetValueExW(key, L"TypesSupported", 0, REG_DWORD, (const BYTE *)&types, sizeof(types));
    if (st != ERROR_SUCCESS) {
        inst_fail(L"writing TypesSupported", (DWORD)st);
        goto cleanup;
    }
    inst_say(L"event source:    %ls in the Application log (messages from %ls)\n",
             PCNS_EVENT_SOURCE, exe);
    rc = 0;
cleanup:
    RegCloseKey(key);
    return rc;
}

int uninstall_event_source(void)
{
    LSTATUS st = RegDeleteTreeW(HKEY_LOCAL_MACHINE, EVENTLOG_KEY);
    if (st == ERROR_FILE_NOT_FOUND) {
        inst_say(L"event source:    %ls was not registered\n", PCNS_EVENT_SOURCE);
        return 0;
    }
    if (st != ERROR_SUCCESS)
        return inst_fail(L"deleting HKLM\\" EVENTLOG_KEY, (DWORD)st);
    inst_say(L"event source:    %ls removed\n", PCNS_EVENT_SOURCE);
    return 0;
}

/* ---- 4. the service ---------------------------------------------------------------------- */

/* Url and Source set: `configure` has run, so the sender has something to do. */
BOOL inst_sender_configured(void)
{
    pcns_config *cfg = inst_config_load();
    BOOL ready = cfg != NULL && (cfg->present & (PCNS_CFG_URL | PCNS_CFG_SOURCE)) ==
                                    (PCNS_CFG_URL | PCNS_CFG_SOURCE);
    inst_config_free(cfg);
    return ready;
}

/* 0, or 1 having said why. */
static int service_state(SC_HANDLE svc, SERVICE_STATUS_PROCESS *status)
{
    DWORD need = 0;
    if (!QueryServiceStatusEx(svc, SC_STATUS_PROCESS_INFO, (BYTE *)status, sizeof(*status), &need))
        return inst_fail(L"QueryServiceStatusEx(" PCNS_SERVICE_NAME L")", GetLastError());
    return 0;
}

/* Read the failure actions back: TRUE when the service manager kept the three restarts. */
static BOOL failure_actions_kept(SC_HANDLE svc)
{
    DWORD buf[256]; /* DWORD-aligned for the structure */
    SERVICE_FAILURE_ACTIONSW *got = (SERVICE_FAILURE_ACTIONSW *)buf;
    DWORD need = 0;

    if (!QueryServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, (BYTE *)buf, sizeof(buf), &need))
        return FALSE;
    return got->cActions == 3 && got->lpsaActions != NULL && got->dwResetPeriod == 24 * 60 * 60 &&
           got->lpsaActions[0].Type == SC_ACTION_RESTART && got->lpsaActions[0].Delay == 5000 &&
           got->lpsaActions[1].Type == SC_ACTION_RESTART && got->lpsaActions[1].Delay == 30000 &&
           got->lpsaActions[2].Type == SC_ACTION_RESTART && got->lpsaActions[2].Delay == 60000;
}

int install_service(const wchar_t *exe)
{
    SC_HANDLE scm = NULL, svc = NULL;
    wchar_t binpath[PATH_CAP + 16];
    SERVICE_DESCRIPTIONW desc;
    SC_ACTION actions[3];
    SERVICE_FAILURE_ACTIONSW failure;
    SERVICE_FAILURE_ACTIONS_FLAG flag;
    SERVICE_STATUS_PROCESS status;
    DWORD err;
    BOOL created = TRUE, kept, flag_ok = TRUE;
    int rc = 1;

    if (!inst_fmt(binpath, ARRAYSIZE(binpath), L"\"%ls\" service", exe))
        return inst_fail(L"the service's command line", ERROR_FILENAME_EXCED_RANGE);
    scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT | SC_MANAGER_CREATE_SERVICE);
    if (scm == NULL)
        return inst_fail(L"OpenSCManagerW", GetLastError());
    svc = CreateServiceW(scm, PCNS_SERVICE_NAME, PCNS_SERVICE_DISPLAY, SERVICE_ALL_ACCESS,
                         SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START, SERVICE_ERROR_NORMAL,
                         binpath, NULL, NULL, NULL, NULL /* LocalSystem */, NULL);
    if (svc == NULL) {
        err = GetLastError();
        if (err != ERROR_SERVICE_EXISTS) {
            inst_fail(L"CreateServiceW(" PCNS_SERVICE_NAME L")", err);
            goto cleanup;
        }
        created = FALSE;
        svc = OpenServiceW(scm, PCNS_SERVICE_NAME, SERVICE_ALL_ACCESS);
        if (svc == NULL) {
            inst_fail(L"OpenServiceW(" PCNS_SERVICE_NAME L")", GetLastError());
            goto cleanup;
        }
        if (!ChangeServiceConfigW(svc, SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START,
                                  SERVICE_ERROR_NORMAL, binpath, NULL, NULL, L"\0", L"LocalSystem",
                                  L"", PCNS_SERVICE_DISPLAY)) {
            inst_fail(L"ChangeServiceConfigW(" PCNS_SERVICE_NAME L")", GetLastError());
            goto cleanup;
        }
    }
    desc.lpDescription = (LPWSTR)SERVICE_DESCRIPTION_TEXT;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_DESCRIPTION, &desc)) {
        inst_fail(L"setting the service's description", GetLastError());
        goto cleanup;
    }
    actions[0].Type = SC_ACTION_RESTART;
    actions[0].Delay = 5000;
    actions[1].Type = SC_ACTION_RESTART;
    actions[1].Delay = 30000;
    actions[2].Type = SC_ACTION_RESTART;
    actions[2].Delay = 60000;
    failure.dwResetPeriod = 24 * 60 * 60;
    failure.lpRebootMsg = NULL;
    failure.lpCommand = NULL;
    failure.cActions = ARRAYSIZE(actions);
    failure.lpsaActions = actions;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS, &failure)) {
        inst_fail(L"setting the service's failure actions", GetLastError());
        goto cleanup;
    }
    kept = failure_actions_kept(svc);
    /* restart also when the sender stops itself with an error, not only when it crashes */
    flag.fFailureActionsOnNonCrashFailures = TRUE;
    if (!ChangeServiceConfig2W(svc, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &flag)) {
        err = GetLastError();
        if (err != ERROR_INVALID_LEVEL) {
            inst_fail(L"setting the service's failure actions flag", err);
            goto cleanup;
        }
        flag_ok = FALSE; /* Windows has had this level since Vista; Wine does not implement it */
    }
    inst_say(L"service:         %ls %ls: %ls, automatic start, LocalSystem, restart after 5 s, "
             L"30 s, 60 s (reset after 1 day)\n",
             PCNS_SERVICE_NAME, created ? L"created" : L"updated", binpath);
    if (!flag_ok)
        inst_say(L"                 (this system has no SERVICE_CONFIG_FAILURE_ACTIONS_FLAG; "
                 L"restarts follow crashes only)\n");
    if (!kept)
        inst_say(L"                 (the service manager accepted the failure actions but does not "
                 L"report them back; check with `sc qfailure %ls`)\n",
                 PCNS_SERVICE_NAME);
    if (!inst_sender_configured()) {
        rc = 0;
        goto cleanup;
    }
    /* configured already (an upgrade): have it running again */
    if (service_state(svc, &status))
        goto cleanup;
    if (status.dwCurrentState == SERVICE_STOPPED) {
        if (!StartServiceW(svc, 0, NULL)) {
            err = GetLastError();
            if (err != ERROR_SERVICE_ALREADY_RUNNING) {
                inst_fail(L"StartServiceW(" PCNS_SERVICE_NAME L"); all else is installed, start it "
                          L"with `net start " PCNS_SERVICE_NAME L"`",
                          err);
                goto cleanup;
            }
        }
        inst_say(L"                 the sender is configured: started\n");
    }
    rc = 0;
cleanup:
    if (svc != NULL)
        CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}

int uninstall_service(void)
{
    SC_HANDLE scm = NULL, svc = NULL;
    SERVICE_STATUS_PROCESS status;
    SERVICE_STATUS plain;
    DWORD waited = 0, err;
    int rc = 1;

    scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
    if (scm == NULL)
        return inst_fail(L"OpenSCManagerW", GetLastError());
    svc = OpenServiceW(scm, PCNS_SERVICE_NAME, SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE);
    if (svc == NULL) {
        err = GetLastError();
        if (err == ERROR_SERVICE_DOES_NOT_EXIST) {
            inst_say(L"service:         %ls was not installed\n", PCNS_SERVICE_NAME);
            rc = 0;
        } else {
            inst_fail(L"OpenServiceW(" PCNS_SERVICE_NAME L")", err);
        }
        goto cleanup;
    }
    if (service_state(svc, &status))
        goto cleanup;
    if (status.dwCurrentState != SERVICE_STOPPED) {
        if (!ControlService(svc, SERVICE_CONTROL_STOP, &plain)) {
            err = GetLastError();
            if (err != ERROR_SERVICE_NOT_ACTIVE) {
                inst_fail(L"stopping " PCNS_SERVICE_NAME, err);
                goto cleanup;
            }
        }
        for (;;) {
            if (service_state(svc, &status))
                goto cleanup;
            if (status.dwCurrentState == SERVICE_STOPPED)
                break;
            if (waited >= STOP_WAIT_MS) {
                inst_fail(L"stopping " PCNS_SERVICE_NAME L" (still running after 30 s)",
                          ERROR_SERVICE_REQUEST_TIMEOUT);
                goto cleanup;
            }
            Sleep(250);
            waited += 250;
        }
        inst_say(L"service:         %ls stopped\n", PCNS_SERVICE_NAME);
    }
    if (!DeleteService(svc)) {
        err = GetLastError();
        if (err != ERROR_SERVICE_MARKED_FOR_DELETE) {
            inst_fail(L"DeleteService(" PCNS_SERVICE_NAME L")", err);
            goto cleanup;
        }
    }
    inst_say(L"service:         %ls deleted\n", PCNS_SERVICE_NAME);
    rc = 0;
cleanup:
    if (svc != NULL)
        CloseServiceHandle(svc);
    CloseServiceHandle(scm);
    return rc;
}
