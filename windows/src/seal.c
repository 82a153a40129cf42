/* RFC 9180 HPKE base-mode seal with CNG only. See include/pcns_seal.h. No CRT.
 *
 * DHKEM(P-256, HKDF-SHA256): ECDH via BCryptSecretAgreement + BCryptDeriveKey(
 * BCRYPT_KDF_RAW_SECRET), which hands the shared X coordinate back little-endian (Windows and
 * Wine alike), so it is reversed here. HKDF is built from HMAC-SHA256 (RFC 5869); every output
 * here is at most one hash long, so Expand is a single HMAC block. AES-256-GCM through
 * BCRYPT_CHAIN_MODE_GCM.
 */
#include "pcns_seal.h"

#include "pcns_cng.h"

#define HASH_LEN 32
#define COORD_LEN 32
#define AES_KEY_LEN 32
#define NONCE_LEN 12

static const BYTE HPKE_V1[7] = {'H', 'P', 'K', 'E', '-', 'v', '1'};
/* "KEM" || I2OSP(kem_id = 0x0010, 2) */
static const BYTE SUITE_KEM[5] = {'K', 'E', 'M', 0x00, 0x10};
/* "HPKE" || I2OSP(kem_id, 2) || I2OSP(kdf_id = 1, 2) || I2OSP(aead_id = 2, 2) */
static const BYTE SUITE_HPKE[10] = {'H', 'P', 'K', 'E', 0x00, 0x10, 0x00, 0x01, 0x00, 0x02};

#define LABEL(s) {(const BYTE *)(s), sizeof(s) - 1}

/* ---- P-256 point check: 256-bit arithmetic mod p, 8 little-endian 32-bit limbs ---------- */

typedef struct {
    UINT32 w[8];
} bn256;

static const bn256 P256_P = {{0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0x00000000, 0x00000000,
                              0x00000000, 0x00000001, 0xFFFFFFFF}};
static const bn256 P256_B = {{0x27D2604B, 0x3BCE3C3E, 0xCC53B0F6, 0x651D06B0, 0x769886BC,
                              0xB3EBBD55, 0xAA3A93E7, 0x5AC635D8}};

static void bn_from_be(bn256 *r, const BYTE be[32])
{
    int i;
    for (i = 0; i < 8; i++) {
        const BYTE *q = be + 28 - 4 * i;
        r->w[i] = ((UINT32)q[0] << 24) | ((UINT32)q[1] << 16) | ((UINT32)q[2] << 8) | q[3];
    }
}

static int bn_cmp(const bn256 *a, const bn256 *b)
{
    int i;
    for (i = 7; i >= 0; i--) {
        if (a->w[i] != b->w[i])
            return a->w[i] < b->w[i] ? -1 : 1;
    }
    return 0;
}

/* r = a - b mod 2^256; the borrow out. */
static UINT32 bn_sub(bn256 *r, const bn256 *a, const bn256 *b)
{
    UINT64 borrow = 0;
    int i;
    for (i = 0; i < 8; i++) {
        UINT64 d = (UINT64)a->w[i] - b->w[i] - borrow;
        r->w[i] = (UINT32)d;
        borrow = (d >> 63) & 1;
    }
    return (UINT32)borrow;
}

/* r = a + b mod 2^256; the carry out. */
static UINT32 bn_add(bn256 *r, const bn256 *a, const bn256 *b)
{
    UINT64 carry = 0;
    int i;
    for (i = 0; i < 8; i++) {
        UINT64 s = (UINT64)a->w[i] + b->w[i] + carry;
        r->w[i] = (UINT32)s;
        carry = s >> 32;
    }
    return (UINT32)carry;
}

/* a, b < p */
static void bn_addmod(bn256 *r, const bn256 *a, const bn256 *b)
{
    UINT32 carry = bn_add(r, a, b);
    if (carry || bn_cmp(r, &P256_P) >= 0)
        bn_sub(r, r, &P256_P);
}

static void bn_submod(bn256 *r, const bn256 *a, const bn256 *b)
{
    if (bn_sub(r, a, b))
        bn_add(r, r, &P256_P);
}

/* r = a * b mod p, a, b < p: the 512-bit product, reduced one bit at a time (public data,
 * a handful of calls per seal: simple beats fast here). */
static void bn_mulmod(bn256 *r, const bn256 *a, const bn256 *b)
{
    UINT32 t[16];
    bn256 acc;
    int i, j, bit;

    for (i = 0; i < 16; i++)
        t[i] = 0;
    for (i = 0; i < 8; i++) {
        UINT64 carry = 0;
        for (j = 0; j < 8; j++) {
            UINT64 m = (UINT64)a->w[i] * b->w[j] + t[i + j] + carry;
            t[i + j] = (UINT32)m;
            carry = m >> 32;
        }
        t[i + 8] = (UINT32)carry;
    }

    for (i = 0; i < 8; i++)
        acc.w[i] = 0;
    for (bit = 511; bit >= 0; bit--) {
        UINT32 top = acc.w[7] >> 31;
        for (i = 7; i > 0; i--)
            acc.w[i] = (acc.w[i] << 1) | (acc.w[i - 1] >> 31);
        acc.w[0] = (acc.w[0] << 1) | ((t[bit / 32] >> (bit % 32)) & 1);
        /* acc < p before the shift, so 2 acc + 1 < 2p: one subtraction suffices. */
        if (top || bn_cmp(&acc, &P256_P) >= 0)
            bn_sub(&acc, &acc, &P256_P);
    }
    *r = acc;
}

NTSTATUS pcns_p256_check_point(const BYTE point[PCNS_P256_POINT_LEN])
{
    bn256 x, y, lhs, rhs, t;

    if (point == NULL || point[0] != 0x04)
        return PCNS_STATUS_NOT_ON_CURVE;
    bn_from_be(&x, point + 1);
    bn_from_be(&y, point + 1 + COORD_LEN);
    if (bn_cmp(&x, &P256_P) >= 0 || bn_cmp(&y, &P256_P) >= 0)
        return PCNS_STATUS_NOT_ON_CURVE;

    bn_mulmod(&lhs, &y, &y);      /* y^2 */
    bn_mulmod(&t, &x, &x);        /* x^2 */
    bn_mulmod(&rhs, &t, &x);      /* x^3 */
    bn_submod(&rhs, &rhs, &x);    /* x^3 - 3x */
    bn_submod(&rhs, &rhs, &x);
    bn_submod(&rhs, &rhs, &x);
    bn_addmod(&rhs, &rhs, &P256_B); /* + b */
    return bn_cmp(&lhs, &rhs) == 0 ? PCNS_STATUS_OK : PCNS_STATUS_NOT_ON_CURVE;
}

/* ---- info -------------------------------------------------------------------------------- */

static void put_u32be(BYTE *p, ULONG v)
{
    p[0] = (BYTE)(v >> 24);
    p[1] = (BYTE)(v >> 16);
    p[2] = (BYTE)(v >> 8);
    p[3] = (BYTE)v;
}

NTSTATUS pcns_seal_info(pcns_bytes source, pcns_bytes webhook_id, pcns_bytes user,
                        pcns_bytes key_id, BYTE *out, ULONG out_cap, ULONG *out_len)
{
    const pcns_bytes parts[4] = {source, webhook_id, user, key_id};
    ULONG64 total = PCNS_SEAL_INFO_TAG_LEN;
    ULONG n, i;

    if (out_len == NULL)
        return PCNS_STATUS_INVALID_PARAMETER;
    *out_len = 0;
    for (i = 0; i < 4; i++) {
        if (parts[i].len != 0 && parts[i].data == NULL)
            return PCNS_STATUS_INVALID_PARAMETER;
        total += 4 + (ULONG64)parts[i].len;
    }
    if (total > out_cap || out == NULL)
        return PCNS_STATUS_BUFFER_TOO_SMALL;

    memcpy(out, PCNS_SEAL_INFO_TAG, PCNS_SEAL_INFO_TAG_LEN);
    n = PCNS_SEAL_INFO_TAG_LEN;
    for (i = 0; i < 4; i++) {
        put_u32be(out + n, parts[i].len);
        n += 4;
        if (parts[i].len != 0)
            memcpy(out + n, parts[i].data, parts[i].len);
        n += parts[i].len;
    }
    *out_len = n;
    return PCNS_STATUS_OK;
}

/* ---- HKDF (RFC 5869) from HMAC-SHA256, labelled as RFC 9180 section 4 says ---------------- */

static NTSTATUS hmac_sha256(BCRYPT_ALG_HANDLE hmac, const BYTE *key, ULONG key_len,
                            const pcns_bytes *parts, int nparts, BYTE out[HASH_LEN])
{
    /* HMAC pads its key with zeros, so HKDF's empty salt (HashLen zeros) is this key. */
    static const BYTE zero_key[HASH_LEN] = {0};
    BCRYPT_HASH_HANDLE h = NULL;
    NTSTATUS st;
    int i;

    if (key_len == 0) {
        key = zero_key;
        key_len = sizeof(zero_key);
    }
    st = BCryptCreateHash(hmac, &h, NULL, 0, (PUCHAR)key, key_len, 0);
    if (!BCRYPT_SUCCESS(st))
        goto out;
    for (i = 0; i < nparts; i++) {
        if (parts[i].len == 0)
            continue;
        st = BCryptHashData(h, (PUCHAR)parts[i].data, parts[i].len, 0);
        if (!BCRYPT_SUCCESS(st))
            goto out_hash;
    }
    st = BCryptFinishHash(h, out, HASH_LEN, 0);
out_hash:
    BCryptDestroyHash(h);
out:
    return st;
}

/* LabeledExtract(salt, label, ikm) = Extract(salt, "HPKE-v1" || suite_id || label || ikm) */
static NTSTATUS labeled_extract(BCRYPT_ALG_HANDLE hmac, const BYTE *salt, ULONG salt_len,
                                pcns_bytes suite, pcns_bytes label, pcns_bytes ikm,
                                BYTE out[HASH_LEN])
{
    const pcns_bytes parts[4] = {{HPKE_V1, sizeof(HPKE_V1)}, suite, label, ikm};
    return hmac_sha256(hmac, salt, salt_len, parts, 4, out);
}

/* LabeledExpand(prk, label, info, L) = Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id ||
 * label || info, L), L <= HashLen: T(1) = HMAC(prk, labeled_info || 0x01). */
static NTSTATUS labeled_expand(BCRYPT_ALG_HANDLE hmac, const BYTE prk[HASH_LEN],
                               pcns_bytes suite, pcns_bytes label, pcns_bytes info, ULONG len,
                               BYTE *out)
{
    const BYTE length[2] = {(BYTE)(len >> 8), (BYTE)len};
    const BYTE counter = 0x01;
    const pcns_bytes parts[6] = {{length, 2}, {HPKE_V1, sizeof(HPKE_V1)}, suite, label, info,
                                 {&counter, 1}};
    BYTE t[HASH_LEN];
    NTSTATUS st;

    if (len > HASH_LEN)
        return PCNS_STATUS_INVALID_PARAMETER;
    st = hmac_sha256(hmac, prk, HASH_LEN, parts, 6, t);
    if (BCRYPT_SUCCESS(st))
        memcpy(out, t, len);
    SecureZeroMemory(t, sizeof(t));
    return st;
}

/* ---- the seal ---------------------------------------------------------------------------- */

static void reverse(BYTE *p, ULONG n)
{
    ULONG i;
    for (i = 0; i < n / 2; i++) {
        BYTE c = p[i];
        p[i] = p[n - 1 - i];
        p[n - 1 - i] = c;
    }
}

/* The ECCPUBLIC/ECCPRIVATE blob of a point (and scalar). */
static void ecc_blob(BYTE *blob, ULONG magic, const BYTE point[PCNS_P256_POINT_LEN],
                     const BYTE *scalar)
{
    BCRYPT_ECCKEY_BLOB hdr;
    hdr.dwMagic = magic;
    hdr.cbKey = COORD_LEN;
    memcpy(blob, &hdr, sizeof(hdr));
    memcpy(blob + sizeof(hdr), point + 1, 2 * COORD_LEN);
    if (scalar != NULL)
        memcpy(blob + sizeof(hdr) + 2 * COORD_LEN, scalar, COORD_LEN);
}

static NTSTATUS seal(const BYTE *sk_e, const BYTE *pk_e, const BYTE pk_r[PCNS_P256_POINT_LEN],
                     const BYTE *info, ULONG info_len, const BYTE *aad, ULONG aad_len,
                     const BYTE *pt, ULONG pt_len, BYTE *out, ULONG out_cap, ULONG *out_len)
{
    BCRYPT_ALG_HANDLE ecdh = NULL, hmac = NULL, aes = NULL;
    BCRYPT_KEY_HANDLE key_e = NULL, key_r = NULL, key_aes = NULL;
    BCRYPT_SECRET_HANDLE agreed = NULL;
    BCRYPT_AUTHENTICATED_CIPHER_MODE_INFO auth;
    BYTE pub_blob[sizeof(BCRYPT_ECCKEY_BLOB) + 2 * COORD_LEN];
    BYTE priv_blob[sizeof(BCRYPT_ECCKEY_BLOB) + 3 * COORD_LEN];
    BYTE kem_context[2 * PCNS_P256_POINT_LEN];
    BYTE dh[COORD_LEN], eae_prk[HASH_LEN], shared[HASH_LEN];
    BYTE psk_id_hash[HASH_LEN], info_hash[HASH_LEN], context[1 + 2 * HASH_LEN];
    BYTE secret[HASH_LEN], aes_key[AES_KEY_LEN], nonce[NONCE_LEN];
    BYTE *enc = out, *ct = out + PCNS_SEAL_ENC_LEN, *tag;
    ULONG cb = 0;
    NTSTATUS st;
    const pcns_bytes none = {NULL, 0};
    const pcns_bytes kem = {SUITE_KEM, sizeof(SUITE_KEM)};
    const pcns_bytes hpke = {SUITE_HPKE, sizeof(SUITE_HPKE)};
    const pcns_bytes l_eae_prk = LABEL("eae_prk"), l_shared = LABEL("shared_secret");
    const pcns_bytes l_psk_id = LABEL("psk_id_hash"), l_info = LABEL("info_hash");
    const pcns_bytes l_secret = LABEL("secret"), l_key = LABEL("key");
    const pcns_bytes l_nonce = LABEL("base_nonce");
    const pcns_bytes ctx = {context, sizeof(context)};

    if (out_len != NULL)
        *out_len = 0;
    if (out_len == NULL || pk_r == NULL || (info == NULL && info_len != 0) ||
        (aad == NULL && aad_len != 0) || (pt == NULL && pt_len != 0))
        return PCNS_STATUS_INVALID_PARAMETER;
    if (pt_len > 0xFFFFFFFFUL - PCNS_SEAL_OVERHEAD || out == NULL ||
        out_cap < pt_len + PCNS_SEAL_OVERHEAD)
        return PCNS_STATUS_BUFFER_TOO_SMALL;
    st = pcns_p256_check_point(pk_r);
    if (!BCRYPT_SUCCESS(st))
        return st;
    if (pk_e != NULL) {
        st = pcns_p256_check_point(pk_e);
        if (!BCRYPT_SUCCESS(st))
            return st;
    }
    tag = ct + pt_len;

    st = pcns_alg(PCNS_ALG_ECDH_P256, &ecdh);
    if (!BCRYPT_SUCCESS(st))
        goto out;
    st = pcns_alg(PCNS_ALG_HMAC_SHA256, &hmac);
    if (!BCRYPT_SUCCESS(st))
        goto out;
    st = pcns_alg(PCNS_ALG_AES_GCM, &aes);
    if (!BCRYPT_SUCCESS(st))
        goto out;

    /* Ephemeral key pair: skE, pkE; enc = SerializePublicKey(pkE). */
    if (sk_e != NULL) {
        ecc_blob(priv_blob, BCRYPT_ECDH_PRIVATE_P256_MAGIC, pk_e, sk_e);
        st = BCryptImportKeyPair(ecdh, NULL, BCRYPT_ECCPRIVATE_BLOB, &key_e, priv_blob,
                                 sizeof(priv_blob), 0);
        SecureZeroMemory(priv_blob, sizeof(priv_blob));
        if (!BCRYPT_SUCCESS(st))
            goto out;
        memcpy(enc, pk_e, PCNS_P256_POINT_LEN);
    } else {
        BCRYPT_ECCKEY_BLOB hdr;
        st = BCryptGenerateKeyPair(ecdh, &key_e, 256, 0);
        if (!BCRYPT_SUCCESS(st))
            goto out;
        st = BCryptFinalizeKeyPair(key_e, 0);
        if (!BCRYPT_SUCCESS(st))
            goto out_key_e;
        st = BCryptExportKey(key_e, NULL, BCRYPT_ECCPUBLIC_BLOB, pub_blob, sizeof(pub_blob), &cb,
                             0);
        if (!BCRYPT_SUCCESS(st))
            goto out_key_e;
        memcpy(&hdr, pub_blob, sizeof(hdr));
        if (cb != sizeof(pub_blob) || hdr.dwMagic != BCRYPT_ECDH_PUBLIC_P256_MAGIC ||
            hdr.cbKey != COORD_LEN) {
            st = PCNS_STATUS_CNG_OUTPUT;
            goto out_key_e;
        }
        enc[0] = 0x04;
        memcpy(enc + 1, pub_blob + sizeof(hdr), 2 * COORD_LEN);
    }

    /* dh = DH(skE, pkR): the shared point's X coordinate, big-endian. */
    ecc_blob(pub_blob, BCRYPT_ECDH_PUBLIC_P256_MAGIC, pk_r, NULL);
    st = BCryptImportKeyPair(ecdh, NULL, BCRYPT_ECCPUBLIC_BLOB, &key_r, pub_blob,
                             sizeof(pub_blob), 0);
    if (!BCRYPT_SUCCESS(st))
        goto out_key_e;
    st = BCryptSecretAgreement(key_e, key_r, &agreed, 0);
    if (!BCRYPT_SUCCESS(st))
        goto out_key_r;
    st = BCryptDeriveKey(agreed, BCRYPT_KDF_RAW_SECRET, NULL, dh, sizeof(dh), &cb, 0);
    if (!BCRYPT_SUCCESS(st))
        goto out_agreed;
    if (cb != sizeof(dh)) {
        st = PCNS_STATUS_CNG_OUTPUT;
        goto out_agreed;
    }
    reverse(dh, sizeof(dh)); /* CNG's raw secret is little-endian */

    /* shared_secret = ExtractAndExpand(dh, enc || pkRm) */
    memcpy(kem_context, enc, PCNS_P256_POINT_LEN);
    memcpy(kem_context + PCNS_P256_POINT_LEN, pk_r, PCNS_P256_POINT_LEN);
    {
        const pcns_bytes ikm = {dh, sizeof(dh)};
        const pcns_bytes kc = {kem_context, sizeof(kem_context)};
        st = labeled_extract(hmac, NULL, 0, kem, l_eae_prk, ikm, eae_prk);
        if (!BCRYPT_SUCCESS(st))
            goto out_agreed;
        st = labeled_expand(hmac, eae_prk, kem, l_shared, kc, HASH_LEN, shared);
        if (!BCRYPT_SUCCESS(st))
            goto out_agreed;
    }

    /* KeySchedule(mode_base, shared_secret, info, psk = "", psk_id = "") */
    {
        const pcns_bytes info_b = {info, info_len};
        st = labeled_extract(hmac, NULL, 0, hpke, l_psk_id, none, psk_id_hash);
        if (!BCRYPT_SUCCESS(st))
            goto out_agreed;
        st = labeled_extract(hmac, NULL, 0, hpke, l_info, info_b, info_hash);
        if (!BCRYPT_SUCCESS(st))
            goto out_agreed;
    }
    context[0] = 0x00; /* mode_base */
    memcpy(context + 1, psk_id_hash, HASH_LEN);
    memcpy(context + 1 + HASH_LEN, info_hash, HASH_LEN);
    st = labeled_extract(hmac, shared, HASH_LEN, hpke, l_secret, none, secret);
    if (!BCRYPT_SUCCESS(st))
        goto out_agreed;
    st = labeled_expand(hmac, secret, hpke, l_key, ctx, AES_KEY_LEN, aes_key);
    if (!BCRYPT_SUCCESS(st))
        goto out_agreed;
    st = labeled_expand(hmac, secret, hpke, l_nonce, ctx, NONCE_LEN, nonce);
    if (!BCRYPT_SUCCESS(st))
        goto out_agreed;

    /* ct = Seal(key, base_nonce XOR I2OSP(seq = 0, Nn), aad, pt) */
    st = BCryptGenerateSymmetricKey(aes, &key_aes, NULL, 0, aes_key, sizeof(aes_key), 0);
    if (!BCRYPT_SUCCESS(st))
        goto out_agreed;
    BCRYPT_INIT_AUTH_MODE_INFO(auth);
    auth.pbNonce = nonce;
    auth.cbNonce = sizeof(nonce);
    auth.pbAuthData = (PUCHAR)aad;
    auth.cbAuthData = aad_len;
    auth.pbTag = tag;
    auth.cbTag = PCNS_SEAL_TAG_LEN;
    cb = 0;
    st = BCryptEncrypt(key_aes, (PUCHAR)(pt_len != 0 ? pt : ct), pt_len, &auth, NULL, 0, ct,
                       pt_len, &cb, 0);
    if (!BCRYPT_SUCCESS(st))
        goto out_key_aes;
    if (cb != pt_len) {
        st = PCNS_STATUS_CNG_OUTPUT;
        goto out_key_aes;
    }
    *out_len = pt_len + PCNS_SEAL_OVERHEAD;

out_key_aes:
    BCryptDestroyKey(key_aes);
out_agreed:
    BCryptDestroySecret(agreed);
out_key_r:
    BCryptDestroyKey(key_r);
out_key_e:
    BCryptDestroyKey(key_e);
out:
    SecureZeroMemory(dh, sizeof(dh));
    SecureZeroMemory(eae_prk, sizeof(eae_prk));
    SecureZeroMemory(shared, sizeof(shared));
    SecureZeroMemory(secret, sizeof(secret));
    SecureZeroMemory(aes_key, sizeof(aes_key));
    SecureZeroMemory(nonce, sizeof(nonce));
    SecureZeroMemory(context, sizeof(context));
    SecureZeroMemory(info_hash, sizeof(info_hash));
    if (!BCRYPT_SUCCESS(st) && out != NULL)
        SecureZeroMemory(out, pt_len + PCNS_SEAL_OVERHEAD);
    return st;
}

NTSTATUS pcns_seal(const BYTE pk_r[PCNS_P256_POINT_LEN], const BYTE *info, ULONG info_len,
                   const BYTE *pt, ULONG pt_len, BYTE *out, ULONG out_cap, ULONG *out_len)
{
    return seal(NULL, NULL, pk_r, info, info_len, NULL, 0, pt, pt_len, out, out_cap, out_len);
}

NTSTATUS pcns_seal_with_ephemeral(const BYTE sk_e[PCNS_P256_SCALAR_LEN],
                                  const BYTE pk_e[PCNS_P256_POINT_LEN],
                                  const BYTE pk_r[PCNS_P256_POINT_LEN], const BYTE *info,
                                  ULONG info_len, const BYTE *aad, ULONG aad_len, const BYTE *pt,
                                  ULONG pt_len, BYTE *out, ULONG out_cap, ULONG *out_len)
{
    if (sk_e == NULL || pk_e == NULL)
        return PCNS_STATUS_INVALID_PARAMETER;
    return seal(sk_e, pk_e, pk_r, info, info_len, aad, aad_len, pt, pt_len, out, out_cap,
                out_len);
}
