/* Store key names (eng_keyspace.h). */
#include <stdio.h>
#include <string.h>

#include "cdx_hex.h"
#include "eng_buf.h"
#include "eng_keyspace.h"

const uint8_t eng_zero_token[ENG_TOKEN_LEN];

void eng_key_cat(char *k, const uint8_t tok[ENG_TOKEN_LEN])
{
    char h[ENG_HEX_LEN + 1];
    cdx_hex_encode(tok, ENG_TOKEN_LEN, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:cat:%s", h);
}

void eng_key_claim(char *k, const uint8_t tok[ENG_TOKEN_LEN])
{
    char h[ENG_HEX_LEN + 1];
    cdx_hex_encode(tok, ENG_TOKEN_LEN, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:key:%s", h);
}

void eng_key_head(char *k, const uint8_t id[CDX_ID_LEN])
{
    char h[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:{%s}:head", h);
}

void eng_key_bucket(char *k, const uint8_t id[CDX_ID_LEN], unsigned b)
{
    char h[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, h);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:{%s}:b:%02x", h, b);
}

void eng_key_rec(char *k, const uint8_t id[CDX_ID_LEN], char kind, const uint8_t tok[ENG_TOKEN_LEN])
{
    char h[2 * CDX_ID_LEN + 1], t[ENG_HEX_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, h);
    cdx_hex_encode(tok, ENG_TOKEN_LEN, t);
    snprintf(k, CDX_STORE_KEY_MAX, "cdx:%s:%c:%s", h, kind, t);
}

void eng_bucket_token(unsigned b, uint8_t tok[ENG_TOKEN_LEN])
{
    memset(tok, 0, ENG_TOKEN_LEN);
    eng_be32(tok, b);
}

void eng_key_index_patterns(const uint8_t id[CDX_ID_LEN], char pat[2][ENG_KEY_PATTERN_MAX])
{
    char hx[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, hx);
    snprintf(pat[0], ENG_KEY_PATTERN_MAX, "cdx:%s:*", hx);
    snprintf(pat[1], ENG_KEY_PATTERN_MAX, "cdx:{%s}:*", hx);
}

void eng_key_rec_pattern(const uint8_t id[CDX_ID_LEN], char pat[ENG_KEY_PATTERN_MAX])
{
    char hx[2 * CDX_ID_LEN + 1];
    cdx_hex_encode(id, CDX_ID_LEN, hx);
    snprintf(pat, ENG_KEY_PATTERN_MAX, "cdx:%s:*", hx);
}

bool eng_key_parse_cat(const char *key, uint8_t tok[ENG_TOKEN_LEN])
{
    return strlen(key) == ENG_KEY_CAT_PREFIX_LEN + ENG_HEX_LEN &&
           !cdx_hex_decode(key + ENG_KEY_CAT_PREFIX_LEN, tok, ENG_TOKEN_LEN);
}

bool eng_key_parse_claim(const char *key, uint8_t tok[ENG_TOKEN_LEN])
{
    return !strncmp(key, "cdx:key:", ENG_KEY_CAT_PREFIX_LEN) &&
           strlen(key) == ENG_KEY_CAT_PREFIX_LEN + ENG_HEX_LEN &&
           !cdx_hex_decode(key + ENG_KEY_CAT_PREFIX_LEN, tok, ENG_TOKEN_LEN);
}

bool eng_key_parse_index_id(const char *key, uint8_t id[CDX_ID_LEN])
{
    if (!strncmp(key, "cdx:cat:", ENG_KEY_CAT_PREFIX_LEN) ||
        !strncmp(key, "cdx:key:", ENG_KEY_CAT_PREFIX_LEN))
        return false;
    const char *h = key + 4 + (key[4] == '{');
    char hx[2 * CDX_ID_LEN + 1];
    if (strlen(h) < 2 * CDX_ID_LEN)
        return false;
    memcpy(hx, h, 2 * CDX_ID_LEN);
    hx[2 * CDX_ID_LEN] = '\0';
    return !cdx_hex_decode(hx, id, CDX_ID_LEN);
}

bool eng_key_parse_rec(const char *key, uint8_t out[1 + ENG_TOKEN_LEN])
{
    /* cdx:<32 hex>:<kind>:<32 hex> */
    enum { ID_AT = 4, KIND_AT = ID_AT + 2 * CDX_ID_LEN + 1, TOK_AT = KIND_AT + 2 };
    if (strlen(key) != TOK_AT + ENG_HEX_LEN || key[KIND_AT - 1] != ':' || key[KIND_AT + 1] != ':' ||
        cdx_hex_decode(key + TOK_AT, out + 1, ENG_TOKEN_LEN))
        return false;
    out[0] = (uint8_t)key[KIND_AT];
    return true;
}
