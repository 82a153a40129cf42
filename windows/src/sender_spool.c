/* pcns-sender: one spool record, read and checked by include/pcns_spool.h (src/spool.c). */
#include "sender_internal.h"
#include "pcns_spool.h"

#include <stdlib.h>
#include <string.h>
#include <wchar.h>

BOOL record_load(const wchar_t *path, sender_record *r, BOOL *io_error, wchar_t *reason,
                 size_t reason_cap)
{
    pcns_spool_record rec;
    ULONG len = 0;
    int problem = PCNS_SPOOL_OK;
    DWORD err;

    memset(r, 0, sizeof *r);
    *io_error = FALSE;
    r->raw = malloc(PCNS_SPOOL_FILE_MAX);
    if (!r->raw) {
        *io_error = TRUE;
        swprintf(reason, reason_cap, L"out of memory");
        return FALSE;
    }
    err = pcns_spool_read(path, r->raw, PCNS_SPOOL_FILE_MAX, &len, &rec, &problem);
    if (err != ERROR_SUCCESS) {
        if (err == ERROR_INVALID_DATA)
            swprintf(reason, reason_cap, L"%ls", pcns_spool_problem_text(problem));
        else {
            *io_error = TRUE;
            swprintf(reason, reason_cap, L"error %lu", err);
        }
        record_free(r);
        return FALSE;
    }
    if (rec.webhook_id.len >= sizeof r->webhook_id) {
        swprintf(reason, reason_cap, L"webhook-id too long");
        record_free(r);
        return FALSE;
    }
    r->raw_len = len;
    r->rid = rec.rid;
    r->changed_at = rec.changed_at;
    memcpy(r->webhook_id, rec.webhook_id.data, rec.webhook_id.len);
    r->webhook_id[rec.webhook_id.len] = 0;
    r->source = (const char *)rec.source.data;
    r->source_len = rec.source.len;
    r->user = (const char *)rec.user.data;
    r->user_len = rec.user.len;
    r->key_id = (const char *)rec.key_id.data;
    r->key_id_len = rec.key_id.len;
    r->sealed = rec.sealed.data;
    r->sealed_len = rec.sealed.len;
    return TRUE;
}

void record_free(sender_record *r)
{
    if (r->raw) {
        SecureZeroMemory(r->raw, PCNS_SPOOL_FILE_MAX);
        free(r->raw);
    }
    memset(r, 0, sizeof *r);
}
