/* harness.exe: loads pcnsflt.dll and calls its exports the way LSASS does.
 *
 *   harness DLL [--user NAME] [--rid N] [--password TEXT | --password-file PATH |
 *                --password-utf16-file PATH] [--threads N] [--calls M] [--latency] [--no-guard]
 *                [--rid-per-call] [--interval-ms N]
 *
 * --password-file is UTF-8 (the whole file, converted to UTF-16 here); --password-utf16-file is
 * raw UTF-16LE code units (so unpaired surrogates can be given). Each thread owns its strings:
 * UNICODE_STRINGs that are not NUL-terminated, with MaximumLength > Length, whose last byte is
 * the last byte before a PAGE_NOACCESS page (unless --no-guard: then ordinary memory, followed
 * by non-NUL filler up to MaximumLength). A filter that reads past Length, or scans for a NUL,
 * faults: every call runs inside __try/__except and a fault is counted and reported.
 *
 * --interval-ms N makes each thread wait about N ms after each call (uniformly from N/2 to 3N/2,
 * so the threads do not move in step): an offered load of threads x 1000/N changes/s instead of
 * calls back to back. The wait is not part of the latency.
 *
 * --rid-per-call gives call i of thread t the RID base + t * 100000 + i, so a test can tell from
 * the spool which thread wrote what, in which order.
 *
 * Per call: PasswordFilter (must return TRUE), then PasswordChangeNotify (must return 0), timed
 * with QueryPerformanceCounter. Prints "calls=.. ok=.. failed=.. crashed=.." and, with
 * --latency, "p50_us=.. p99_us=.. max_us=..". Exit 0 when every call succeeded, 1 when one
 * failed or faulted, 2 on usage errors, 3 when the DLL or an export is missing.
 */
#include <windows.h>
#include <ntsecapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

typedef BOOLEAN(NTAPI *init_fn)(void);
typedef BOOLEAN(NTAPI *filter_fn)(PLSA_UNICODE_STRING, PLSA_UNICODE_STRING, PLSA_UNICODE_STRING,
                                  BOOLEAN);
typedef NTSTATUS(NTAPI *notify_fn)(PLSA_UNICODE_STRING, ULONG, PLSA_UNICODE_STRING);

static filter_fn password_filter;
static notify_fn password_change_notify;
static const WCHAR *user_text = L"alice";
static size_t user_units;
static WCHAR *password;
static size_t password_units;
static ULONG rid = 1104;
static DWORD interval_ms;
static BOOL rid_per_call = FALSE;
static int calls_per_thread = 1;
static BOOL guard = TRUE;
static HANDLE start_gate;
static double ticks_per_us;

typedef struct {
    int index;
    double *latency_us;
    int ok, failed, crashed;
    DWORD first_exception;
    NTSTATUS first_status;
} thread_state;

/* A copy of `units` WCHARs placed so that its last byte is the last readable byte. */
static BOOL place(const WCHAR *text, size_t units, LSA_UNICODE_STRING *out)
{
    SYSTEM_INFO si;
    size_t bytes = units * sizeof(WCHAR), page, span;
    BYTE *base;
    DWORD old;

    if (bytes > 0xFFFC)
        return FALSE;
    GetSystemInfo(&si);
    page = si.dwPageSize;
    out->Length = (USHORT)bytes;
    out->MaximumLength = (USHORT)(bytes + sizeof(WCHAR));
    if (!guard) {
        WCHAR *p = HeapAlloc(GetProcessHeap(), 0, bytes + sizeof(WCHAR));
        if (p == NULL)
            return FALSE;
        memcpy(p, text, bytes);
        p[units] = L'X'; /* not a NUL: a filter scanning for one reads garbage */
        out->Buffer = p;
        return TRUE;
    }
    span = (bytes + page - 1) / page * page;
    if (span == 0)
        span = page;
    base = VirtualAlloc(NULL, span + page, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    if (base == NULL)
        return FALSE;
    if (!VirtualProtect(base + span, page, PAGE_NOACCESS, &old))
        return FALSE;
    memset(base, 'X', span);
    memcpy(base + span - bytes, text, bytes);
    out->Buffer = (PWSTR)(base + span - bytes);
    return TRUE;
}

/* The exception filter records the code (reading it in the filter is what every compiler
 * supports) and runs the handler. */
static int record_exception(DWORD code, DWORD *out)
{
    *out = code != 0 ? code : 0xE0000000u;
    return EXCEPTION_EXECUTE_HANDLER;
}

static NTSTATUS guarded_call(LSA_UNICODE_STRING *user, ULONG call_rid, LSA_UNICODE_STRING *pass,
                             BOOLEAN *accepted, DWORD *exception)
{
    NTSTATUS st = (NTSTATUS)0xC0000001L;
    *exception = 0;
    *accepted = FALSE;
    __try {
        *accepted = password_filter(user, user, pass, TRUE);
        st = password_change_notify(user, call_rid, pass);
    } __except (record_exception(GetExceptionCode(), exception)) {
        st = (NTSTATUS)0xC0000001L;
    }
    return st;
}

static DWORD WINAPI worker(LPVOID arg)
{
    thread_state *t = arg;
    LSA_UNICODE_STRING user, pass;
    ULONG jitter = 2463534242u + (ULONG)t->index * 7919u;
    int i;

    if (!place(user_text, user_units, &user) || !place(password, password_units, &pass)) {
        t->failed = calls_per_thread;
        return 1;
    }
    WaitForSingleObject(start_gate, INFINITE);
    for (i = 0; i < calls_per_thread; i++) {
        LARGE_INTEGER a, b;
        BOOLEAN accepted;
        DWORD exception;
        NTSTATUS st;

        QueryPerformanceCounter(&a);
        st = guarded_call(&user,
                          rid_per_call ? rid + (ULONG)t->index * 100000u + (ULONG)i : rid, &pass,
                          &accepted, &exception);
        QueryPerformanceCounter(&b);
        t->latency_us[i] = (double)(b.QuadPart - a.QuadPart) / ticks_per_us;
        if (exception != 0) {
            if (t->crashed++ == 0)
                t->first_exception = exception;
        } else if (st != 0 || !accepted) {
            if (t->failed++ == 0)
                t->first_status = st != 0 ? st : (NTSTATUS)0xC000006CL;
        } else {
            t->ok++;
        }
        if (interval_ms != 0) {
            /* Uniform in [interval/2, 3*interval/2): the threads drift apart instead of
             * waking together on the same timer tick. */
            jitter ^= jitter << 13;
            jitter ^= jitter >> 17;
            jitter ^= jitter << 5;
            Sleep(interval_ms / 2 + jitter % interval_ms);
        }
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

/* The whole file; `*len` bytes. */
static BYTE *read_file(const WCHAR *path, size_t *len)
{
    FILE *f = _wfopen(path, L"rb");
    BYTE *data = NULL;
    long size;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto out;
    data = malloc((size_t)size + 2);
    if (data == NULL)
        goto out;
    if (fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
        goto out;
    }
    *len = (size_t)size;
out:
    fclose(f);
    return data;
}

static int usage(void)
{
    fwprintf(stderr, L"usage: harness DLL [--user NAME] [--rid N] [--password TEXT | "
                     L"--password-file UTF8 | --password-utf16-file RAW] [--threads N] "
                     L"[--calls M] [--latency] [--no-guard] [--rid-per-call] [--interval-ms N]\n");
    return 2;
}

int wmain(int argc, wchar_t **argv)
{
    const wchar_t *dll_path;
    HMODULE dll;
    init_fn initialize;
    int threads = 1, i, total_ok = 0, total_failed = 0, total_crashed = 0;
    BOOL latency = FALSE;
    thread_state *state;
    HANDLE *handles;
    LARGE_INTEGER freq;

    if (argc < 2)
        return usage();
    dll_path = argv[1];
    password = L"correct horse battery staple";
    password_units = wcslen(password);
    for (i = 2; i < argc; i++) {
        const wchar_t *a = argv[i];
        const wchar_t *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (wcscmp(a, L"--latency") == 0) {
            latency = TRUE;
        } else if (wcscmp(a, L"--no-guard") == 0) {
            guard = FALSE;
        } else if (wcscmp(a, L"--rid-per-call") == 0) {
            rid_per_call = TRUE;
        } else if (v == NULL) {
            return usage();
        } else if (wcscmp(a, L"--user") == 0) {
            user_text = v;
            i++;
        } else if (wcscmp(a, L"--rid") == 0) {
            rid = wcstoul(v, NULL, 10);
            i++;
        } else if (wcscmp(a, L"--threads") == 0) {
            threads = _wtoi(v);
            i++;
        } else if (wcscmp(a, L"--calls") == 0) {
            calls_per_thread = _wtoi(v);
            i++;
        } else if (wcscmp(a, L"--interval-ms") == 0) {
            interval_ms = wcstoul(v, NULL, 10);
            i++;
        } else if (wcscmp(a, L"--password") == 0) {
            password = (WCHAR *)v;
            password_units = wcslen(v);
            i++;
        } else if (wcscmp(a, L"--password-file") == 0) {
            size_t len = 0;
            BYTE *utf8 = read_file(v, &len);
            int units;
            if (utf8 == NULL)
                return usage();
            units = len == 0 ? 0
                             : MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, (char *)utf8,
                                                   (int)len, NULL, 0);
            if (len != 0 && units == 0) {
                fwprintf(stderr, L"%ls is not UTF-8\n", v);
                return 2;
            }
            password = malloc(((size_t)units + 1) * sizeof(WCHAR));
            if (len != 0)
                MultiByteToWideChar(CP_UTF8, 0, (char *)utf8, (int)len, password, units);
            password_units = (size_t)units;
            SecureZeroMemory(utf8, len);
            free(utf8);
            i++;
        } else if (wcscmp(a, L"--password-utf16-file") == 0) {
            size_t len = 0;
            BYTE *raw = read_file(v, &len);
            if (raw == NULL || len % 2 != 0)
                return usage();
            password = (WCHAR *)raw;
            password_units = len / 2;
            i++;
        } else {
            return usage();
        }
    }
    if (threads < 1 || calls_per_thread < 1 || threads > 256)
        return usage();
    user_units = wcslen(user_text);

    dll = LoadLibraryW(dll_path);
    if (dll == NULL) {
        fwprintf(stderr, L"LoadLibrary(%ls) failed: %lu\n", dll_path, GetLastError());
        return 3;
    }
    initialize = (init_fn)(void *)GetProcAddress(dll, "InitializeChangeNotify");
    password_filter = (filter_fn)(void *)GetProcAddress(dll, "PasswordFilter");
    password_change_notify = (notify_fn)(void *)GetProcAddress(dll, "PasswordChangeNotify");
    if (initialize == NULL || password_filter == NULL || password_change_notify == NULL) {
        fwprintf(stderr, L"missing export(s): InitializeChangeNotify=%p PasswordFilter=%p "
                         L"PasswordChangeNotify=%p\n",
                 (void *)initialize, (void *)password_filter, (void *)password_change_notify);
        return 3;
    }
    if (!initialize()) {
        fwprintf(stderr, L"InitializeChangeNotify returned FALSE\n");
        return 1;
    }

    QueryPerformanceFrequency(&freq);
    ticks_per_us = (double)freq.QuadPart / 1e6;
    start_gate = CreateEventW(NULL, TRUE, FALSE, NULL);
    state = calloc((size_t)threads, sizeof(*state));
    handles = calloc((size_t)threads, sizeof(*handles));
    if (start_gate == NULL || state == NULL || handles == NULL)
        return 1;
    for (i = 0; i < threads; i++) {
        state[i].index = i;
        state[i].latency_us = calloc((size_t)calls_per_thread, sizeof(double));
        if (state[i].latency_us == NULL)
            return 1;
        handles[i] = CreateThread(NULL, 0, worker, &state[i], 0, NULL);
        if (handles[i] == NULL) {
            fwprintf(stderr, L"CreateThread failed: %lu\n", GetLastError());
            return 1;
        }
    }
    SetEvent(start_gate);
    for (i = 0; i < threads; i++) {
        WaitForSingleObject(handles[i], INFINITE);
        CloseHandle(handles[i]);
        total_ok += state[i].ok;
        total_failed += state[i].failed;
        total_crashed += state[i].crashed;
        if (state[i].crashed)
            wprintf(L"thread %d: exception 0x%08lX in a call\n", i,
                    (unsigned long)state[i].first_exception);
        if (state[i].failed)
            wprintf(L"thread %d: a call returned 0x%08lX\n", i,
                    (unsigned long)state[i].first_status);
    }
    wprintf(L"calls=%d ok=%d failed=%d crashed=%d\n", threads * calls_per_thread, total_ok,
            total_failed, total_crashed);
    if (latency) {
        size_t n = (size_t)threads * (size_t)calls_per_thread, k = 0, p99;
        double *all = malloc(n * sizeof(double));
        if (all == NULL)
            return 1;
        for (i = 0; i < threads; i++) {
            memcpy(all + k, state[i].latency_us, (size_t)calls_per_thread * sizeof(double));
            k += (size_t)calls_per_thread;
        }
        qsort(all, n, sizeof(double), cmp_double);
        p99 = (n * 99 + 99) / 100; /* nearest rank: ceil(0.99 n) */
        wprintf(L"p50_us=%.1f p99_us=%.1f max_us=%.1f\n", all[(n + 1) / 2 - 1], all[p99 - 1],
                all[n - 1]);
    }
    fflush(stdout);
    return total_ok == threads * calls_per_thread ? 0 : 1;
}
