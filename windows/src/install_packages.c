/* install_packages.c: step 5, "pcnsflt" in LSA's Notification Packages, a REG_MULTI_SZ
 * (install_internal.h). The value is read by its length, never trusting a terminator; every
 * other entry and its order are kept, and the messages show the list before and after.
 */
#include "install_internal.h"

#define LSA_KEY L"SYSTEM\\CurrentControlSet\\Control\\Lsa"
#define NP_VALUE L"Notification Packages"
#define NP_MAX_BYTES (64u * 1024u) /* Notification Packages is a handful of names */

struct entry {
    size_t off, len; /* in WCHARs, into the value's data */
};

struct packages {
    wchar_t *data;      /* the value as read, plus two NULs of our own */
    size_t units;       /* WCHARs of data that were the value's */
    struct entry *list; /* the entries LSA sees, in order */
    size_t count;
    BOOL absent, unterminated;
    size_t ignored; /* WCHARs after the list's end that are not NUL (LSA ignores them too) */
};

static void packages_free(struct packages *p)
{
    if (p->list != NULL)
        HeapFree(GetProcessHeap(), 0, p->list);
    if (p->data != NULL)
        HeapFree(GetProcessHeap(), 0, p->data);
    ZeroMemory(p, sizeof(*p));
}

/* Split the data by its length, never trusting a terminator: each entry runs to the next NUL or
 * to the end of the data; an empty string ends the list, as it ends LSA's reading of it. */
static void packages_parse(struct packages *p)
{
    size_t i = 0, k;

    p->count = 0;
    while (i < p->units) {
        size_t start = i;
        while (i < p->units && p->data[i] != L'\0')
            i++;
        if (i == start)
            break; /* the empty string: the list's end */
        p->list[p->count].off = start;
        p->list[p->count].len = i - start;
        p->count++;
        if (i < p->units)
            i++; /* the entry's NUL */
    }
    p->unterminated = p->units > 0 && i >= p->units; /* no empty string before the data ran out */
    p->ignored = 0;
    for (k = i; k < p->units; k++)
        if (p->data[k] != L'\0')
            p->ignored++;
}

static int packages_read(HKEY lsa, struct packages *p)
{
    DWORD type = 0, cb = 0, attempt;
    LSTATUS st;

    ZeroMemory(p, sizeof(*p));
    for (attempt = 0; attempt < 4; attempt++) {
        st = RegQueryValueExW(lsa, NP_VALUE, NULL, &type, NULL, &cb);
        if (st == ERROR_FILE_NOT_FOUND) {
            p->absent = TRUE;
            return 0;
        }
        if (st != ERROR_SUCCESS)
            return inst_fail(L"reading Notification Packages", (DWORD)st);
        if (type != REG_MULTI_SZ) {
            inst_complain(L"pcns-sender: HKLM\\" LSA_KEY L"\\" NP_VALUE L" has registry type %lu, "
                          L"not REG_MULTI_SZ; left unchanged: fix it by hand, then run this "
                          L"again\n",
                          (unsigned long)type);
            return 1;
        }
        if (cb > NP_MAX_BYTES)
            return inst_fail(L"Notification Packages is implausibly large; left unchanged",
                             ERROR_FILE_TOO_LARGE);
        if (p->data != NULL)
            HeapFree(GetProcessHeap(), 0, p->data);
        /* room for the data, rounded up to whole WCHARs, and two NULs that are ours */
        p->data = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, cb + 2 * sizeof(wchar_t) + 1);
        if (p->data == NULL)
            return inst_fail(L"reading Notification Packages", ERROR_NOT_ENOUGH_MEMORY);
        st = RegQueryValueExW(lsa, NP_VALUE, NULL, &type, (BYTE *)p->data, &cb);
        if (st == ERROR_MORE_DATA)
            continue; /* it grew between the two calls */
        if (st != ERROR_SUCCESS)
            return inst_fail(L"reading Notification Packages", (DWORD)st);
        if (type != REG_MULTI_SZ)
            continue; /* changed under us: check the type again */
        p->units = cb / sizeof(wchar_t); /* an odd last byte is not a WCHAR: ignored */
        p->list = HeapAlloc(GetProcessHeap(), 0, (p->units / 2 + 1) * sizeof(struct entry));
        if (p->list == NULL)
            return inst_fail(L"reading Notification Packages", ERROR_NOT_ENOUGH_MEMORY);
        packages_parse(p);
        return 0;
    }
    return inst_fail(L"reading Notification Packages (it kept changing)", ERROR_RETRY);
}

/* "scecli, rassfm" for the messages. */
static void packages_text(const struct packages *p, const wchar_t *skip, const wchar_t *add,
                          wchar_t *out, size_t cap)
{
    size_t used = 0, i;
    BOOL first = TRUE;

    out[0] = L'\0';
    for (i = 0; i <= p->count; i++) {
        const wchar_t *s;
        size_t len;
        if (i < p->count) {
            s = p->data + p->list[i].off;
            len = p->list[i].len;
            if (skip != NULL && inst_same_name(s, (int)len, skip))
                continue;
        } else if (add != NULL) {
            s = add;
            len = wcslen(add);
        } else {
            break;
        }
        if (used + len + 3 >= cap) {
            if (cap > 4)
                wcscpy(out + (used < cap - 4 ? used : cap - 4), L"...");
            return;
        }
        if (!first) {
            out[used++] = L',';
            out[used++] = L' ';
        }
        memcpy(out + used, s, len * sizeof(wchar_t));
        used += len;
        out[used] = L'\0';
        first = FALSE;
    }
    if (first && cap > 7)
        wcscpy(out, L"(none)");
}

/* Write the entries (minus `skip`, plus `add`), each NUL-terminated, then the list's final NUL. */
static int packages_write(HKEY lsa, const struct packages *p, const wchar_t *skip,
                          const wchar_t *add)
{
    size_t units = 1, i, at = 0, addlen = add ? wcslen(add) : 0;
    wchar_t *out = NULL;
    LSTATUS st;
    int rc = 1;

    for (i = 0; i < p->count; i++)
        units += p->list[i].len + 1;
    if (add)
        units += addlen + 1;
    if (units * sizeof(wchar_t) > NP_MAX_BYTES)
        return inst_fail(L"writing Notification Packages", ERROR_FILE_TOO_LARGE);
    out = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, units * sizeof(wchar_t));
    if (out == NULL)
        return inst_fail(L"writing Notification Packages", ERROR_NOT_ENOUGH_MEMORY);
    for (i = 0; i < p->count; i++) {
        const wchar_t *s = p->data + p->list[i].off;
        if (skip != NULL && inst_same_name(s, (int)p->list[i].len, skip))
            continue;
        memcpy(out + at, s, p->list[i].len * sizeof(wchar_t));
        at += p->list[i].len + 1; /* the NUL is already there (zeroed) */
    }
    if (add) {
        memcpy(out + at, add, addlen * sizeof(wchar_t));
        at += addlen + 1;
    }
    at += 1; /* the list's final NUL */
    st = RegSetValueExW(lsa, NP_VALUE, 0, REG_MULTI_SZ, (const BYTE *)out,
                        (DWORD)(at * sizeof(wchar_t)));
    if (st != ERROR_SUCCESS) {
        inst_fail(L"writing Notification Packages", (DWORD)st);
        goto cleanup;
    }
    rc = 0;
cleanup:
    HeapFree(GetProcessHeap(), 0, out);
    return rc;
}

static BOOL packages_has(const struct packages *p, const wchar_t *name)
{
    size_t i;
    for (i = 0; i < p->count; i++)
        if (inst_same_name(p->data + p->list[i].off, (int)p->list[i].len, name))
            return TRUE;
    return FALSE;
}

static void packages_notes(const struct packages *p)
{
    if (p->absent)
        inst_say(L"                 (the value was absent; created)\n");
    if (p->unterminated && !p->absent)
        inst_say(L"                 (the value lacked its final NUL; written well-formed)\n");
    if (p->ignored)
        inst_say(L"                 (%lu characters after the list's empty-string end were "
                 L"dropped; LSA ignores them too)\n",
                 (unsigned long)p->ignored);
}

int packages_edit(BOOL adding)
{
    const wchar_t *skip = adding ? NULL : PCNS_FILTER_PACKAGE;
    const wchar_t *add = adding ? PCNS_FILTER_PACKAGE : NULL;
    HKEY lsa = NULL;
    struct packages p;
    wchar_t before[512], after[512];
    LSTATUS st;
    int rc = 1;

    ZeroMemory(&p, sizeof(p));
    if (adding)
        st = RegCreateKeyExW(HKEY_LOCAL_MACHINE, LSA_KEY, 0, NULL, 0,
                             KEY_QUERY_VALUE | KEY_SET_VALUE, NULL, &lsa, NULL);
    else
        st = RegOpenKeyExW(HKEY_LOCAL_MACHINE, LSA_KEY, 0, KEY_QUERY_VALUE | KEY_SET_VALUE, &lsa);
    if (st == ERROR_FILE_NOT_FOUND && !adding) {
        inst_say(L"LSA packages:    %ls was not listed\n", PCNS_FILTER_PACKAGE);
        return 0;
    }
    if (st != ERROR_SUCCESS)
        return inst_fail(L"opening HKLM\\" LSA_KEY, (DWORD)st);
    if (packages_read(lsa, &p))
        goto cleanup;
    packages_text(&p, NULL, NULL, before, ARRAYSIZE(before));
    /* already as wanted: listed when adding, not listed when removing */
    if (!packages_has(&p, PCNS_FILTER_PACKAGE) == !adding) {
        inst_say(L"LSA packages:    %ls (%ls %ls)\n", before, PCNS_FILTER_PACKAGE,
                 adding ? L"already listed" : L"was not listed");
        rc = 0;
        goto cleanup;
    }
    if (packages_write(lsa, &p, skip, add))
        goto cleanup;
    packages_text(&p, skip, add, after, ARRAYSIZE(after));
    inst_say(L"LSA packages:    Notification Packages %ls -> %ls\n",
             p.absent ? L"(absent)" : before, after);
    packages_notes(&p);
    rc = 0;
cleanup:
    packages_free(&p);
    RegCloseKey(lsa);
    return rc;
}
