/* pcns-sender: WinHTTP. One session and one connection handle for the life of the process, so
 * WinHTTP keeps its TCP (and TLS) connection alive across records; every answer is read to its
 * end, which is what lets WinHTTP put the connection back into its pool for the next request.
 * TLS: certificate verification is never relaxed; an optional SHA-256 pin of the server's
 * certificate is checked before the body is written; an optional client certificate comes from
 * LocalMachine\My by its SHA-1 thumbprint. Redirects are not followed. */
#include <winsock2.h>
#include <ws2tcpip.h>

#include "sender_internal.h"
/* after it: sender_internal.h brings winsock2.h, which must precede windows.h */
#include "pcns_cng.h"

#include <bcrypt.h>
#include <stdio.h>
#include <string.h>
#include <wchar.h>

#ifndef NT_SUCCESS
#define NT_SUCCESS(s) (((NTSTATUS)(s)) >= 0)
#endif

BOOL host_is_loopback(const wchar_t *host)
{
    if (_wcsicmp(host, L"localhost") == 0 || wcscmp(host, L"::1") == 0 ||
        wcscmp(host, L"[::1]") == 0)
        return TRUE;
    /* 127.0.0.0/8 in dotted form */
    if (wcsncmp(host, L"127.", 4) == 0) {
        const wchar_t *p = host + 4;
        int dots = 0;
        for (; *p; p++) {
            if (*p == L'.')
                dots++;
            else if (*p < L'0' || *p > L'9')
                return FALSE;
        }
        return dots == 2;
    }
    return FALSE;
}

typedef struct url_parts {
    BOOL secure;
    wchar_t host[256];
    INTERNET_PORT port;
    wchar_t path[1024];
} url_parts;

static DWORD parse_url(const wchar_t *url, url_parts *u, wchar_t *msg, size_t msg_cap)
{
    URL_COMPONENTS uc;
    size_t plen;

    memset(&uc, 0, sizeof uc);
    memset(u, 0, sizeof *u);
    uc.dwStructSize = sizeof uc;
    uc.lpszHostName = u->host;
    uc.dwHostNameLength = ARRAYSIZE(u->host);
    uc.lpszUrlPath = u->path;
    uc.dwUrlPathLength = ARRAYSIZE(u->path) - 32;
    uc.dwSchemeLength = (DWORD)-1;
    uc.dwExtraInfoLength = (DWORD)-1;
    uc.dwUserNameLength = (DWORD)-1;
    uc.dwPasswordLength = (DWORD)-1;
    if (!WinHttpCrackUrl(url, 0, 0, &uc)) {
        DWORD e = GetLastError();
        if (msg)
            swprintf(msg, msg_cap, L"--url: not a valid URL (error %lu)", e);
        return e ? e : ERROR_INVALID_PARAMETER;
    }
    if (uc.nScheme != INTERNET_SCHEME_HTTP && uc.nScheme != INTERNET_SCHEME_HTTPS) {
        if (msg)
            swprintf(msg, msg_cap, L"--url: must be https:// (or http:// to loopback)");
        return ERROR_INVALID_PARAMETER;
    }
    if (uc.dwUserNameLength || uc.dwPasswordLength || uc.dwExtraInfoLength) {
        if (msg)
            swprintf(msg, msg_cap, L"--url: no user, password, query or fragment allowed");
        return ERROR_INVALID_PARAMETER;
    }
    if (!u->host[0]) {
        if (msg)
            swprintf(msg, msg_cap, L"--url: no host");
        return ERROR_INVALID_PARAMETER;
    }
    u->secure = uc.nScheme == INTERNET_SCHEME_HTTPS;
    u->port = uc.nPort;
    if (!u->secure && !host_is_loopback(u->host)) {
        if (msg)
            swprintf(msg, msg_cap,
                     L"--url: http:// is allowed only to a loopback host; use https:// for %ls",
                     u->host);
        return ERROR_INVALID_PARAMETER;
    }
    plen = wcslen(u->path);
    while (plen && u->path[plen - 1] == L'/')
        u->path[--plen] = 0;
    wcscat(u->path, L"/v1/password-changes");
    return 0;
}

DWORD http_url_check(const wchar_t *url, wchar_t *msg, size_t msg_cap)
{
    url_parts u;
    return parse_url(url, &u, msg, msg_cap);
}

/* Nagle. Wine's WinHTTP writes a request's headers and its body with two send() calls; with
 * Nagle's algorithm on, the body then waits for the ACK of the headers, which the receiver
 * delays (40 ms on Linux) because it has nothing to answer yet: about 44 ms per POST on a
 * kept-alive connection, whatever the receiver's speed. WinHTTP has no option for TCP_NODELAY,
 * so when it reports a new connection we find its socket among this process's handles (a
 * SOCKET is a handle; getsockopt() answers WSAENOTSOCK for anything else) and set TCP_NODELAY
 * on each TCP socket connected to the receiver's port. Nothing depends on it but speed, and
 * only under Wine: on Windows WinHTTP coalesces its writes already, and there a getsockopt() on
 * a handle that is not a socket becomes an AFD ioctl on whatever the handle is, which can wait
 * behind another thread's synchronous I/O on it (the service dispatcher's control pipe). */
static INTERNET_PORT g_nodelay_port;
static volatile LONG g_nodelay_count;

static BOOL running_on_wine(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    return ntdll != NULL && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

static void set_nodelay_on_connections(INTERNET_PORT port)
{
    ULONG_PTR v;
    int misses = 0;

    for (v = 4; v < 0x10000 && misses < 2048; v += 4) {
        SOCKET s = (SOCKET)v;
        int type = 0, len = sizeof type, one = 1;
        struct sockaddr_storage peer;
        int plen = sizeof peer;
        USHORT peer_port;

        if (getsockopt(s, SOL_SOCKET, SO_TYPE, (char *)&type, &len) != 0) {
            misses++;
            continue;
        }
        misses = 0;
        if (type != SOCK_STREAM || getpeername(s, (struct sockaddr *)&peer, &plen) != 0)
            continue;
        if (peer.ss_family == AF_INET)
            peer_port = ntohs(((struct sockaddr_in *)&peer)->sin_port);
        else if (peer.ss_family == AF_INET6)
            peer_port = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
        else
            continue;
        if (peer_port == port &&
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof one) == 0)
            InterlockedIncrement(&g_nodelay_count);
    }
}

static void CALLBACK status_callback(HINTERNET handle, DWORD_PTR context, DWORD status,
                                     LPVOID info, DWORD info_len)
{
    (void)handle;
    (void)context;
    (void)info;
    (void)info_len;
    if (status == WINHTTP_CALLBACK_STATUS_CONNECTED_TO_SERVER)
        set_nodelay_on_connections(g_nodelay_port);
}

LONG http_nodelay_count(void)
{
    return g_nodelay_count;
}

DWORD http_open(http_client *h, const wchar_t *url, DWORD timeout_ms, const BYTE *pin,
                const BYTE *client_thumbprint)
{
    url_parts u;
    DWORD err;

    memset(h, 0, sizeof *h);
    err = parse_url(url, &u, NULL, 0);
    if (err)
        return err;
    h->secure = u.secure;
    wcscpy(h->host, u.host);
    h->port = u.port;
    wcscpy(h->path, u.path);
    h->timeout_ms = timeout_ms ? timeout_ms : 10000;
    if (pin) {
        memcpy(h->pin, pin, 32);
        h->has_pin = TRUE;
    }

    h->session = WinHttpOpen(L"pcns-sender/1", WINHTTP_ACCESS_TYPE_DEFAULT_PROXY,
                             WINHTTP_NO_PROXY_NAME, WINHTTP_NO_PROXY_BYPASS, 0);
    if (!h->session)
        goto fail;
    if (!WinHttpSetTimeouts(h->session, (int)h->timeout_ms, (int)h->timeout_ms,
                            (int)h->timeout_ms, (int)h->timeout_ms))
        goto fail;
    /* Before WinHttpConnect: the connection and request handles copy the callback. */
    if (running_on_wine()) {
        WSADATA wsa;
        if (WSAStartup(MAKEWORD(2, 2), &wsa) == 0) {
            h->wsa_started = TRUE;
            g_nodelay_port = h->port ? h->port
                                     : (h->secure ? INTERNET_DEFAULT_HTTPS_PORT
                                                  : INTERNET_DEFAULT_HTTP_PORT);
            if (WinHttpSetStatusCallback(h->session, status_callback,
                                         WINHTTP_CALLBACK_FLAG_CONNECT_TO_SERVER,
                                         0) == WINHTTP_INVALID_STATUS_CALLBACK)
                goto fail;
        }
    }

    h->connect = WinHttpConnect(h->session, h->host, h->port, 0);
    if (!h->connect)
        goto fail;
    if (client_thumbprint) {
        BYTE thumb[20];
        CRYPT_HASH_BLOB blob;
        memcpy(thumb, client_thumbprint, sizeof thumb);
        h->store = CertOpenStore(CERT_STORE_PROV_SYSTEM_W, 0, 0,
                                 CERT_SYSTEM_STORE_LOCAL_MACHINE | CERT_STORE_READONLY_FLAG |
                                     CERT_STORE_OPEN_EXISTING_FLAG,
                                 L"MY");
        if (!h->store)
            goto fail;
        blob.cbData = sizeof thumb;
        blob.pbData = thumb;
        h->client_cert = CertFindCertificateInStore(h->store, X509_ASN_ENCODING | PKCS_7_ASN_ENCODING,
                                                    0, CERT_FIND_SHA1_HASH, &blob, NULL);
        if (!h->client_cert) {
            SetLastError(CRYPT_E_NOT_FOUND);
            goto fail;
        }
    }
    return 0;
fail:
    err = GetLastError();
    http_close(h);
    return err ? err : ERROR_GEN_FAILURE;
}

void http_close(http_client *h)
{
    if (h->client_cert)
        CertFreeCertificateContext(h->client_cert);
    if (h->store)
        CertCloseStore(h->store, 0);
    if (h->connect)
        WinHttpCloseHandle(h->connect);
    if (h->session)
        WinHttpCloseHandle(h->session);
    if (h->wsa_started)
        WSACleanup();
    memset(h, 0, sizeof *h);
}

static BOOL sha256(const BYTE *data, DWORD n, BYTE out[32])
{
    return NT_SUCCESS(pcns_sha256(data, n, out));
}

/* TRUE when the server certificate of this request hashes to the pin. */
static BOOL pin_matches(http_client *h, HINTERNET req)
{
    PCCERT_CONTEXT cert = NULL;
    DWORD size = sizeof cert;
    BYTE digest[32];
    BOOL ok = FALSE;

    if (!WinHttpQueryOption(req, WINHTTP_OPTION_SERVER_CERT_CONTEXT, &cert, &size) || !cert)
        return FALSE;
    if (sha256(cert->pbCertEncoded, cert->cbCertEncoded, digest))
        ok = memcmp(digest, h->pin, sizeof digest) == 0;
    CertFreeCertificateContext(cert);
    return ok;
}

/* The Retry-After header in seconds (a delay; an HTTP-date is treated as absent). */
static DWORD retry_after(HINTERNET req)
{
    wchar_t v[64];
    DWORD size = sizeof v, secs = 0;
    const wchar_t *p;

    if (!WinHttpQueryHeaders(req, WINHTTP_QUERY_RETRY_AFTER, WINHTTP_HEADER_NAME_BY_INDEX, v,
                             &size, WINHTTP_NO_HEADER_INDEX))
        return 0;
    for (p = v; *p == L' '; p++)
        ;
    for (; *p >= L'0' && *p <= L'9'; p++) {
        secs = secs * 10 + (DWORD)(*p - L'0');
        if (secs > 86400)
            return 86400;
    }
    return *p == 0 || *p == L' ' ? secs : 0;
}

BOOL http_post(http_client *h, const wchar_t *headers, const BYTE *body, DWORD body_len,
               http_result *r)
{
    HINTERNET req = NULL;
    DWORD opt, size, avail, got;
    BOOL sent_body_with_request = !h->has_pin;
    BOOL ok = FALSE;
    char drain[4096];

    memset(r, 0, sizeof *r);
    req = WinHttpOpenRequest(h->connect, L"POST", h->path, NULL, WINHTTP_NO_REFERER,
                             WINHTTP_DEFAULT_ACCEPT_TYPES, h->secure ? WINHTTP_FLAG_SECURE : 0);
    if (!req)
        goto transport;
    opt = WINHTTP_DISABLE_REDIRECTS;
    if (!WinHttpSetOption(req, WINHTTP_OPTION_DISABLE_FEATURE, &opt, sizeof opt))
        goto transport;
    if (h->secure) {
        if (h->client_cert) {
            if (!WinHttpSetOption(req, WINHTTP_OPTION_CLIENT_CERT_CONTEXT, (void *)h->client_cert,
                                  sizeof(CERT_CONTEXT)))
                goto transport;
        } else if (!WinHttpSetOption(req, WINHTTP_OPTION_CLIENT_CERT_CONTEXT,
                                     WINHTTP_NO_CLIENT_CERT_CONTEXT, 0)) {
            goto transport;
        }
    }
    /* Without a pin the body goes with the headers; with one, the certificate is checked after
     * the handshake and before a byte of the body is written. */
    if (!WinHttpSendRequest(req, headers, (DWORD)-1L,
                            sent_body_with_request ? (LPVOID)body : WINHTTP_NO_REQUEST_DATA,
                            sent_body_with_request ? body_len : 0, body_len, 0))
        goto transport;
    if (h->has_pin) {
        if (!pin_matches(h, req)) {
            r->pin_mismatch = TRUE;
            r->error = ERROR_WINHTTP_SECURE_FAILURE;
            goto out;
        }
        if (!WinHttpWriteData(req, body, body_len, &got) || got != body_len)
            goto transport;
    }
    if (!WinHttpReceiveResponse(req, NULL))
        goto transport;
    size = sizeof r->status;
    if (!WinHttpQueryHeaders(req, WINHTTP_QUERY_STATUS_CODE | WINHTTP_QUERY_FLAG_NUMBER,
                             WINHTTP_HEADER_NAME_BY_INDEX, &r->status, &size,
                             WINHTTP_NO_HEADER_INDEX))
        goto transport;
    r->retry_after = retry_after(req);
    /* Read the answer to its end: a connection is reused only after that. */
    for (;;) {
        avail = 0;
        if (!WinHttpQueryDataAvailable(req, &avail))
            goto transport;
        if (!avail)
            break;
        while (avail) {
            DWORD want = avail < sizeof drain ? avail : sizeof drain;
            got = 0;
            if (!WinHttpReadData(req, drain, want, &got))
                goto transport;
            if (!got)
                break;
            if (r->body_len + 1 < sizeof r->body) {
                DWORD room = (DWORD)sizeof r->body - 1 - r->body_len;
                DWORD take = got < room ? got : room;
                memcpy(r->body + r->body_len, drain, take);
                r->body_len += take;
            }
            avail -= got < avail ? got : avail;
        }
    }
    r->body[r->body_len] = 0;
    ok = TRUE;
    goto out;
transport:
    r->error = GetLastError();
    if (!r->error)
        r->error = ERROR_GEN_FAILURE;
    r->status = 0;
out:
    if (req)
        WinHttpCloseHandle(req);
    return ok;
}
