/* Base64 key files read into locked memory (hsm_keyfile.h). */
#include "hsm_keyfile.h"

#include <string.h>

#include <openssl/evp.h>

#include "cdx_limits.h"
#include "hsm_secfile.h"
#include "hsm_secmem.h"

bool hsm_b64_char(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

static bool is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

cdx_err hsm_key_file_read(const char *path, uint8_t **key)
{
    /* Like a PIN file: nobody but the owner may read it (security review L7). */
    const hsm_secfile_opts o = {.what = "key file",
                                .max = CDX_KEY_FILE_MAX,
                                .err = CDX_ERR_BAD_KEY_FILE,
                                .allow_empty = true};
    cdx_err err = CDX_OK;
    char *text = NULL;
    uint8_t *raw = NULL;
    size_t n = 0;

    *key = NULL;
    if ((err = hsm_secfile_read(path, &o, &text, &n)))
        return err;
    raw = hsm_secmem_alloc(CDX_KEY_FILE_MAX);
    if (!raw) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading a key file");
        goto out;
    }
    /* Drop whitespace (openssl rand -base64 ends with a newline), then validate strictly. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!is_space((unsigned char)text[i]))
            text[m++] = text[i];
    size_t pad = 0;
    while (pad < 2 && m > pad && text[m - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < m - pad; i++)
        if (!hsm_b64_char((unsigned char)text[i])) {
            err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                           "key file %s is not base64 (bad character at offset %zu); create it "
                           "with: openssl rand -base64 32",
                           path, i);
            goto out;
        }
    if (m == 0 || m % 4 != 0) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s is not base64 (%zu characters, not a multiple of 4)", path, m);
        goto out;
    }
    int dec = EVP_DecodeBlock(raw, (const unsigned char *)text, (int)m);
    size_t len = dec < 0 ? 0 : (size_t)dec - pad;
    if (dec < 0) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE, "key file %s is not valid base64", path);
        goto out;
    }
    if (len != CDX_KEY_LEN) {
        err = cdx_fail(CDX_ERR_BAD_KEY_FILE,
                       "key file %s decodes to %zu bytes; an index key is exactly 32 bytes "
                       "(openssl rand -base64 32)",
                       path, len);
        goto out;
    }
    *key = hsm_secmem_alloc(CDX_KEY_LEN);
    if (!*key) {
        err = cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "secret memory exhausted reading a key file");
        goto out;
    }
    memcpy(*key, raw, CDX_KEY_LEN);
out:
    hsm_secmem_free(text);
    hsm_secmem_free(raw);
    return err;
}
