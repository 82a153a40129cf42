/* The spool record: encode, write durably, read and check. See include/pcns_spool.h. No CRT. */
#include "pcns_spool.h"

#include <bcrypt.h>

#include "pcns_cng.h"

/* dir + '\' + name + ".tmp" + NUL, bounded by what config.c accepts for SpoolDir. */
#define PATH_CAP (1024 + 1 + PCNS_SPOOL_NAME_LEN + 4 + 1)

static volatile LONG spool_counter;

static DWORD sha256(const BYTE *data, ULONG len, BYTE out[PCNS_SPOOL_HASH_LEN])
{
    return BCRYPT_SUCCESS(pcns_sha256(data, len, out)) ? ERROR_SUCCESS : ERROR_INTERNAL_ERROR;
}

static void put16(BYTE *p, USHORT v)
{
    p[0] = (BYTE)v;
    p[1] = (BYTE)(v >> 8);
}

static void put32(BYTE *p, ULONG v)
{
    p[0] = (BYTE)v;
    p[1] = (BYTE)(v >> 8);
    p[2] = (BYTE)(v >> 16);
    p[3] = (BYTE)(v >> 24);
}

static USHORT get16(const BYTE *p)
{
    return (USHORT)(p[0] | p[1] << 8);
}

static ULONG get32(const BYTE *p)
{
    return (ULONG)p[0] | (ULONG)p[1] << 8 | (ULONG)p[2] << 16 | (ULONG)p[3] << 24;
}

static void fields_of(const pcns_spool_record *rec, const pcns_bytes *f[PCNS_SPOOL_FIELDS])
{
    f[0] = &rec->webhook_id;
    f[1] = &rec->source;
    f[2] = &rec->user;
    f[3] = &rec->key_id;
    f[4] = &rec->sealed;
}

ULONG pcns_spool_encoded_len(const pcns_spool_record *rec)
{
    const pcns_bytes *f[PCNS_SPOOL_FIELDS];
    ULONG total = PCNS_SPOOL_MIN_LEN;
    int i;

    fields_of(rec, f);
    for (i = 0; i < PCNS_SPOOL_FIELDS; i++) {
        if (f[i]->len > PCNS_SPOOL_FIELD_MAX || (f[i]->len != 0 && f[i]->data == NULL))
            return 0;
        total += f[i]->len; /* at most 5 * 4096 + 76: no overflow */
    }
    return total <= PCNS_SPOOL_FILE_MAX ? total : 0;
}

DWORD pcns_spool_encode(const pcns_spool_record *rec, BYTE *out, ULONG out_cap, ULONG *out_len)
{
    const pcns_bytes *f[PCNS_SPOOL_FIELDS];
    ULONG total = pcns_spool_encoded_len(rec), n;
    DWORD rc;
    int i;

    *out_len = 0;
    if (total == 0)
        return ERROR_INVALID_PARAMETER;
    if (out == NULL || out_cap < total)
        return ERROR_INSUFFICIENT_BUFFER;

    memcpy(out, PCNS_SPOOL_MAGIC, PCNS_SPOOL_MAGIC_LEN);
    put16(out + 8, PCNS_SPOOL_VERSION);
    put16(out + 10, 0);
    put32(out + 12, rec->rid);
    put32(out + 16, (ULONG)rec->changed_at);
    put32(out + 20, (ULONG)(rec->changed_at >> 32));
    n = PCNS_SPOOL_HEADER_LEN;
    fields_of(rec, f);
    for (i = 0; i < PCNS_SPOOL_FIELDS; i++) {
        put32(out + n, f[i]->len);
        n += 4;
        if (f[i]->len != 0)
            memcpy(out + n, f[i]->data, f[i]->len);
        n += f[i]->len;
    }
    rc = sha256(out, n, out + n);
    if (rc != ERROR_SUCCESS) {
        SecureZeroMemory(out, total);
        return rc;
    }
    *out_len = total;
    return ERROR_SUCCESS;
}

static BOOL is_webhook_id(pcns_bytes id)
{
    ULONG i;
    if (id.len != PCNS_WEBHOOK_ID_LEN || memcmp(id.data, "pcns_", 5) != 0)
        return FALSE;
    for (i = 5; i < id.len; i++) {
        BYTE c = id.data[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return FALSE;
    }
    return TRUE;
}

DWORD pcns_spool_decode(const BYTE *buf, ULONG len, pcns_spool_record *rec, int *problem)
{
    pcns_bytes *f[PCNS_SPOOL_FIELDS];
    BYTE digest[PCNS_SPOOL_HASH_LEN];
    ULONG n, body;
    DWORD rc;
    int i;

    memset(rec, 0, sizeof(*rec));
    *problem = PCNS_SPOOL_OK;
    if (len < PCNS_SPOOL_MIN_LEN) {
        *problem = PCNS_SPOOL_TOO_SHORT;
        return ERROR_INVALID_DATA;
    }
    if (len > PCNS_SPOOL_FILE_MAX) {
        *problem = PCNS_SPOOL_TOO_LARGE;
        return ERROR_INVALID_DATA;
    }
    if (memcmp(buf, PCNS_SPOOL_MAGIC, PCNS_SPOOL_MAGIC_LEN) != 0) {
        *problem = PCNS_SPOOL_BAD_MAGIC;
        return ERROR_INVALID_DATA;
    }
    if (get16(buf + 8) != PCNS_SPOOL_VERSION) {
        *problem = PCNS_SPOOL_BAD_VERSION;
        return ERROR_INVALID_DATA;
    }
    rec->version = get16(buf + 8);
    rec->flags = get16(buf + 10);
    rec->rid = get32(buf + 12);
    rec->changed_at = (ULONGLONG)get32(buf + 16) | (ULONGLONG)get32(buf + 20) << 32;

    body = len - PCNS_SPOOL_HASH_LEN;
    n = PCNS_SPOOL_HEADER_LEN;
    f[0] = &rec->webhook_id;
    f[1] = &rec->source;
    f[2] = &rec->user;
    f[3] = &rec->key_id;
    f[4] = &rec->sealed;
    for (i = 0; i < PCNS_SPOOL_FIELDS; i++) {
        ULONG flen;
        if (body - n < 4)
            goto bad_length;
        flen = get32(buf + n);
        n += 4;
        if (flen > PCNS_SPOOL_FIELD_MAX || flen > body - n)
            goto bad_length;
        f[i]->data = buf + n;
        f[i]->len = flen;
        n += flen;
    }
    if (n != body)
        goto bad_length;

    rc = sha256(buf, body, digest);
    if (rc != ERROR_SUCCESS)
        goto fail;
    if (memcmp(digest, buf + body, PCNS_SPOOL_HASH_LEN) != 0) {
        *problem = PCNS_SPOOL_BAD_CHECKSUM;
        rc = ERROR_INVALID_DATA;
        goto fail;
    }
    if (!is_webhook_id(rec->webhook_id) || rec->sealed.len < 81) {
        *problem = PCNS_SPOOL_BAD_FIELD;
        rc = ERROR_INVALID_DATA;
        goto fail;
    }
    return ERROR_SUCCESS;

bad_length:
    *problem = PCNS_SPOOL_BAD_LENGTH;
    rc = ERROR_INVALID_DATA;
fail:
    memset(rec, 0, sizeof(*rec));
    return rc;
}

const WCHAR *pcns_spool_problem_text(int problem)
{
    switch (problem) {
    case PCNS_SPOOL_OK:
        return L"no problem";
    case PCNS_SPOOL_TOO_SHORT:
        return L"shorter than any record";
    case PCNS_SPOOL_TOO_LARGE:
        return L"larger than 32 KiB";
    case PCNS_SPOOL_BAD_MAGIC:
        return L"not a pcns spool record (magic)";
    case PCNS_SPOOL_BAD_VERSION:
        return L"unknown record version";
    case PCNS_SPOOL_BAD_LENGTH:
        return L"a field's length is wrong";
    case PCNS_SPOOL_BAD_CHECKSUM:
        return L"checksum mismatch";
    case PCNS_SPOOL_BAD_FIELD:
        return L"a field's content is malformed";
    default:
        return L"unknown problem";
    }
}

static void put_hex(WCHAR *out, ULONGLONG v, int digits)
{
    static const WCHAR hex[] = L"0123456789abcdef";
    int i;
    for (i = digits - 1; i >= 0; i--) {
        out[i] = hex[v & 0xF];
        v >>= 4;
    }
}

/* `out` = dir '\' name ext NUL; FALSE when it does not fit in PATH_CAP. */
static BOOL join(WCHAR *out, const WCHAR *dir, const WCHAR *name, const WCHAR *ext)
{
    ULONG n = 0, i;
    for (i = 0; dir[i] != 0; i++) {
        if (n >= PATH_CAP - 1)
            return FALSE;
        out[n++] = dir[i];
    }
    if (n >= PATH_CAP - 1)
        return FALSE;
    out[n++] = L'\\';
    for (i = 0; name[i] != 0; i++) {
        if (n >= PATH_CAP - 1)
            return FALSE;
        out[n++] = name[i];
    }
    for (i = 0; ext != NULL && ext[i] != 0; i++) {
        if (n >= PATH_CAP - 1)
            return FALSE;
        out[n++] = ext[i];
    }
    out[n] = 0;
    return TRUE;
}

DWORD pcns_spool_write(const WCHAR *dir, const pcns_spool_record *rec, WCHAR *name,
                       const WCHAR **step)
{
    HANDLE heap = GetProcessHeap();
    const WCHAR *what = L"encode";
    WCHAR file[PCNS_SPOOL_NAME_LEN + 1];
    WCHAR *tmp_path = NULL, *final_path = NULL;
    BYTE *buf = NULL;
    ULONG len = 0, done = 0, random = 0, counter;
    HANDLE h = INVALID_HANDLE_VALUE;
    DWORD rc, cap;

    if (name != NULL)
        name[0] = 0;
    cap = pcns_spool_encoded_len(rec);
    if (dir == NULL || dir[0] == 0 || cap == 0) {
        rc = ERROR_INVALID_PARAMETER;
        goto out;
    }
    buf = HeapAlloc(heap, 0, cap);
    tmp_path = HeapAlloc(heap, 0, 2 * PATH_CAP * sizeof(WCHAR));
    if (buf == NULL || tmp_path == NULL) {
        rc = ERROR_NOT_ENOUGH_MEMORY;
        goto out_free;
    }
    final_path = tmp_path + PATH_CAP;
    rc = pcns_spool_encode(rec, buf, cap, &len);
    if (rc != ERROR_SUCCESS)
        goto out_free;

    what = L"random";
    if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, (PUCHAR)&random, sizeof(random),
                                        BCRYPT_USE_SYSTEM_PREFERRED_RNG))) {
        rc = ERROR_INTERNAL_ERROR;
        goto out_free;
    }
    counter = (ULONG)InterlockedIncrement(&spool_counter);
    put_hex(file, rec->changed_at, 16);
    file[16] = L'-';
    put_hex(file + 17, counter, 8);
    file[25] = L'-';
    put_hex(file + 26, random, 8);
    memcpy(file + 34, PCNS_SPOOL_EXT, 5 * sizeof(WCHAR)); /* ".pcs" and NUL */

    what = L"create";
    if (!join(tmp_path, dir, file, PCNS_SPOOL_TMP_EXT) || !join(final_path, dir, file, NULL)) {
        rc = ERROR_FILENAME_EXCED_RANGE;
        goto out_free;
    }
    /* No FILE_FLAG_WRITE_THROUGH: the record is one write, made durable by the one
     * FlushFileBuffers below (write-through as well would sync it twice). */
    h = CreateFileW(tmp_path, GENERIC_WRITE, 0, NULL, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        rc = GetLastError();
        goto out_free;
    }

    what = L"write";
    while (done < len) {
        DWORD wrote = 0;
        if (!WriteFile(h, buf + done, len - done, &wrote, NULL)) {
            rc = GetLastError();
            goto out_delete;
        }
        if (wrote == 0) {
            rc = ERROR_WRITE_FAULT;
            goto out_delete;
        }
        done += wrote;
    }
    what = L"flush";
    if (!FlushFileBuffers(h)) {
        rc = GetLastError();
        goto out_delete;
    }
    if (!CloseHandle(h)) {
        h = INVALID_HANDLE_VALUE;
        rc = GetLastError();
        goto out_delete;
    }
    h = INVALID_HANDLE_VALUE;

    what = L"rename";
    if (!MoveFileExW(tmp_path, final_path, MOVEFILE_WRITE_THROUGH)) {
        rc = GetLastError();
        goto out_delete;
    }
    if (name != NULL)
        memcpy(name, file, sizeof(file));
    rc = ERROR_SUCCESS;
    what = NULL;
    goto out_free;

out_delete:
    if (h != INVALID_HANDLE_VALUE)
        CloseHandle(h);
    DeleteFileW(tmp_path);
out_free:
    if (buf != NULL) {
        SecureZeroMemory(buf, cap);
        HeapFree(heap, 0, buf);
    }
    if (tmp_path != NULL)
        HeapFree(heap, 0, tmp_path);
out:
    if (step != NULL)
        *step = what;
    SetLastError(rc);
    return rc;
}

DWORD pcns_spool_read(const WCHAR *path, BYTE *buf, ULONG cap, ULONG *len,
                      pcns_spool_record *rec, int *problem)
{
    LARGE_INTEGER size;
    HANDLE h;
    DWORD rc;
    ULONG done = 0;

    *len = 0;
    *problem = PCNS_SPOOL_OK;
    memset(rec, 0, sizeof(*rec));
    h = CreateFileW(path, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                    FILE_ATTRIBUTE_NORMAL | FILE_FLAG_SEQUENTIAL_SCAN, NULL);
    if (h == INVALID_HANDLE_VALUE)
        return GetLastError();
    if (!GetFileSizeEx(h, &size)) {
        rc = GetLastError();
        goto out;
    }
    if (size.QuadPart > PCNS_SPOOL_FILE_MAX) {
        *problem = PCNS_SPOOL_TOO_LARGE;
        rc = ERROR_INVALID_DATA;
        goto out;
    }
    if ((ULONGLONG)size.QuadPart > cap) {
        rc = ERROR_INSUFFICIENT_BUFFER;
        goto out;
    }
    while (done < (ULONG)size.QuadPart) {
        DWORD got = 0;
        if (!ReadFile(h, buf + done, (ULONG)size.QuadPart - done, &got, NULL)) {
            rc = GetLastError();
            goto out;
        }
        if (got == 0)
            break; /* shorter than it said: decode judges what is there */
        done += got;
    }
    *len = done;
    rc = pcns_spool_decode(buf, done, rec, problem);
out:
    CloseHandle(h);
    return rc;
}

static int hex_value(WCHAR c)
{
    if (c >= L'0' && c <= L'9')
        return c - L'0';
    if (c >= L'a' && c <= L'f')
        return c - L'a' + 10;
    return -1;
}

BOOL pcns_spool_parse_name(const WCHAR *name, ULONGLONG *changed_at)
{
    ULONGLONG t = 0;
    int i;

    for (i = 0; i < PCNS_SPOOL_NAME_LEN; i++) {
        if (name[i] == 0)
            return FALSE;
    }
    if (name[PCNS_SPOOL_NAME_LEN] != 0 || name[16] != L'-' || name[25] != L'-' ||
        name[34] != L'.' || name[35] != L'p' || name[36] != L'c' || name[37] != L's')
        return FALSE;
    for (i = 0; i < 34; i++) {
        int v;
        if (i == 16 || i == 25)
            continue;
        v = hex_value(name[i]);
        if (v < 0)
            return FALSE;
        if (i < 16)
            t = t << 4 | (ULONGLONG)v;
    }
    if (changed_at != NULL)
        *changed_at = t;
    return TRUE;
}

static int name_cmp(const WCHAR *a, const WCHAR *b)
{
    for (; *a != 0 && *a == *b; a++, b++)
        ;
    return *a < *b ? -1 : *a > *b ? 1 : 0;
}

DWORD pcns_spool_oldest(const WCHAR *dir, WCHAR *name, ULONG *count)
{
    WIN32_FIND_DATAW fd;
    WCHAR *pattern;
    HANDLE find;
    ULONG n = 0;
    DWORD rc;

    name[0] = 0;
    if (count != NULL)
        *count = 0;
    pattern = HeapAlloc(GetProcessHeap(), 0, PATH_CAP * sizeof(WCHAR));
    if (pattern == NULL)
        return ERROR_NOT_ENOUGH_MEMORY;
    if (!join(pattern, dir, PCNS_SPOOL_PATTERN, NULL)) {
        rc = ERROR_FILENAME_EXCED_RANGE;
        goto out;
    }
    find = FindFirstFileExW(pattern, FindExInfoBasic, &fd, FindExSearchNameMatch, NULL,
                            FIND_FIRST_EX_LARGE_FETCH);
    if (find == INVALID_HANDLE_VALUE) {
        rc = GetLastError();
        if (rc == ERROR_FILE_NOT_FOUND)
            rc = ERROR_NO_MORE_FILES;
        goto out;
    }
    do {
        if (fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)
            continue;
        if (!pcns_spool_parse_name(fd.cFileName, NULL))
            continue;
        n++;
        if (name[0] == 0 || name_cmp(fd.cFileName, name) < 0)
            memcpy(name, fd.cFileName, (PCNS_SPOOL_NAME_LEN + 1) * sizeof(WCHAR));
    } while (FindNextFileW(find, &fd));
    rc = GetLastError();
    FindClose(find);
    if (rc == ERROR_NO_MORE_FILES)
        rc = n != 0 ? ERROR_SUCCESS : ERROR_NO_MORE_FILES;
    if (count != NULL)
        *count = n;
out:
    HeapFree(GetProcessHeap(), 0, pattern);
    return rc;
}
