/* pcns-sender: the SCM entry point (`pcns-sender.exe service`). The service thread runs the same
 * delivery loop as `run`; SERVICE_CONTROL_STOP and SERVICE_CONTROL_SHUTDOWN set g_stop_event,
 * the loop finishes the request in flight and returns, and the service reports STOPPED. */
#include "sender_internal.h"

#include <stdio.h>

#define SERVICE_NAME L"pcns-sender"

static SERVICE_STATUS_HANDLE g_status_handle;
static SERVICE_STATUS g_status;

static void report(DWORD state, DWORD exit_code, DWORD wait_hint)
{
    static DWORD checkpoint = 1;

    g_status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    g_status.dwCurrentState = state;
    g_status.dwControlsAccepted =
        state == SERVICE_START_PENDING ? 0 : SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN;
    g_status.dwWin32ExitCode = exit_code ? ERROR_SERVICE_SPECIFIC_ERROR : NO_ERROR;
    g_status.dwServiceSpecificExitCode = exit_code;
    g_status.dwWaitHint = wait_hint;
    g_status.dwCheckPoint =
        (state == SERVICE_RUNNING || state == SERVICE_STOPPED) ? 0 : checkpoint++;
    (void)SetServiceStatus(g_status_handle, &g_status); /* nothing better to do if it fails */
}

static DWORD WINAPI control_handler(DWORD control, DWORD event_type, LPVOID event_data,
                                    LPVOID context)
{
    (void)event_type;
    (void)event_data;
    (void)context;
    switch (control) {
    case SERVICE_CONTROL_STOP:
    case SERVICE_CONTROL_SHUTDOWN:
        report(SERVICE_STOP_PENDING, 0, 30000);
        SetEvent(g_stop_event);
        return NO_ERROR;
    case SERVICE_CONTROL_INTERROGATE:
        return NO_ERROR;
    default:
        return ERROR_CALL_NOT_IMPLEMENTED;
    }
}

static void WINAPI service_main(DWORD argc, LPWSTR *argv)
{
    int rc;

    (void)argc;
    (void)argv;
    g_status_handle = RegisterServiceCtrlHandlerExW(SERVICE_NAME, control_handler, NULL);
    if (!g_status_handle)
        return;
    report(SERVICE_START_PENDING, 0, 10000);
    report(SERVICE_RUNNING, 0, 0);
    rc = sender_run_loop();
    report(SERVICE_STOPPED, (DWORD)rc, 0);
}

int service_main_dispatch(void)
{
    static SERVICE_TABLE_ENTRYW table[] = {
        {(LPWSTR)SERVICE_NAME, service_main},
        {NULL, NULL},
    };

    g_console = FALSE;
    if (!StartServiceCtrlDispatcherW(table)) {
        DWORD e = GetLastError();
        if (e == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT)
            fwprintf(stderr, L"pcns-sender: `service` is for the service control manager; "
                             L"use `run` on a console\n");
        else
            fwprintf(stderr, L"pcns-sender: StartServiceCtrlDispatcher failed (error %lu)\n", e);
        return 1;
    }
    return 0;
}
