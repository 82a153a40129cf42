/* nulscan.dll: a deliberately wrong password filter, for tests/windows/test_filter.py only.
 *
 * Its PasswordChangeNotify finds the password's end by scanning for a NUL (as 389-DS PassSync's
 * filter does) instead of using Length. harness.exe places the password right before a
 * PAGE_NOACCESS page, so this DLL faults there: the test proves the harness catches that.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved);
BOOLEAN NTAPI InitializeChangeNotify(void);
BOOLEAN NTAPI PasswordFilter(PLSA_UNICODE_STRING AccountName, PLSA_UNICODE_STRING FullName,
                             PLSA_UNICODE_STRING Password, BOOLEAN SetOperation);
NTSTATUS NTAPI PasswordChangeNotify(PLSA_UNICODE_STRING UserName, ULONG RelativeId,
                                    PLSA_UNICODE_STRING NewPassword);

static volatile ULONG sink;

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}

BOOLEAN NTAPI InitializeChangeNotify(void)
{
    return TRUE;
}

BOOLEAN NTAPI PasswordFilter(PLSA_UNICODE_STRING AccountName, PLSA_UNICODE_STRING FullName,
                             PLSA_UNICODE_STRING Password, BOOLEAN SetOperation)
{
    (void)AccountName;
    (void)FullName;
    (void)Password;
    (void)SetOperation;
    return TRUE;
}

NTSTATUS NTAPI PasswordChangeNotify(PLSA_UNICODE_STRING UserName, ULONG RelativeId,
                                    PLSA_UNICODE_STRING NewPassword)
{
    const volatile WCHAR *p = NewPassword->Buffer;
    ULONG n = 0;
    (void)UserName;
    (void)RelativeId;
    while (p[n] != 0) /* the bug under test */
        n++;
    sink = n;
    return 0;
}
