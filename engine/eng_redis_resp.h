/*
 * eng_redis_resp.h - a sans-IO reader for one RESP2 reply of a scalar kind (bulk
 * string, null bulk, integer, simple string, error), for the Redis backend's
 * bulk fetches (pipelined GETRANGE / EXISTS).
 *
 * It never touches a socket. The caller feeds it bytes (eng_resp_feed); while
 * it is inside a bulk payload the caller may instead read straight into the
 * payload's final buffer (eng_resp_room + eng_resp_commit), so a large value
 * is copied once, from the kernel, into memory the caller then owns.
 *
 * The server is treated as hostile: a bulk length is checked against the
 * caller's bound before anything is allocated for it, header lines are
 * bounded, and any malformed byte is an error after which the stream is out
 * of sync (the caller must discard the connection). Errors are sticky.
 *
 * No global state: one eng_resp per byte stream, used by one thread at a
 * time. Its status enum stands in for cdx_err (the caller maps it).
 */
#ifndef ENG_REDIS_RESP_H
#define ENG_REDIS_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_RESP_TEXT_MAX 511       /* status/error text kept; the rest of its line is skipped */
#define ENG_RESP_LINE_MAX (1 << 16) /* longest status/error line accepted */

typedef enum eng_resp_kind {
    ENG_RESP_NONE,
    ENG_RESP_BULK,   /* data/len */
    ENG_RESP_NIL,    /* $-1 */
    ENG_RESP_INT,    /* integer */
    ENG_RESP_STATUS, /* text/len ("+OK") */
    ENG_RESP_ERROR,  /* text/len ("-ERR ...") */
} eng_resp_kind;

typedef enum eng_resp_status {
    ENG_RESP_MORE,    /* the reply is not complete: feed more bytes */
    ENG_RESP_DONE,    /* one reply is complete (kind and its fields are set) */
    ENG_RESP_EPROTO,  /* malformed input (why says what) */
    ENG_RESP_ETYPE,   /* a well-formed start of a kind this reader does not parse (array) */
    ENG_RESP_ETOOBIG, /* a bulk announced longer than the bound (announced holds it) */
    ENG_RESP_ENOMEM,  /* the payload buffer could not be allocated */
} eng_resp_status;

typedef struct eng_resp {
    /* Results, valid after ENG_RESP_DONE. */
    eng_resp_kind kind;
    uint8_t *data; /* BULK: malloc'ed, len + 1 bytes, NUL-terminated, never NULL; take it by
                      setting data = NULL, or eng_resp_reset frees it */
    size_t len;    /* BULK: payload bytes; STATUS/ERROR: bytes kept in text */
    long long integer;
    char text[ENG_RESP_TEXT_MAX + 1]; /* STATUS/ERROR, NUL-terminated, truncated */
    uint64_t announced;               /* after ETOOBIG: the announced length (saturated) */
    const char *why;                  /* after EPROTO: a static description */

    /* Private. */
    int state;
    eng_resp_status err;
    uint64_t bound;
    size_t got;      /* payload bytes received */
    size_t line_len; /* status/error line length so far */
    char hdr[24];    /* "$<len>" / ":<int>" digits */
    size_t hdr_len;
    char type;
} eng_resp;

/*
 * Start reading one reply: bulk strings announced longer than `bound` bytes
 * are refused before anything is allocated. Frees what a previous reply left
 * (p must be zeroed or have been used with these functions before).
 */
void eng_resp_begin(eng_resp *p, uint64_t bound);

/*
 * Consume bytes of the reply from buf[0..n). Stops at the end of the reply:
 * *used (always set) says how many bytes were consumed, which is less than n
 * when the reply ended before the input did. Returns ENG_RESP_MORE (all n
 * used, reply not complete), ENG_RESP_DONE, or an error (sticky: every later
 * call returns it again, consuming nothing): ENG_RESP_EPROTO, ENG_RESP_ETYPE,
 * ENG_RESP_ETOOBIG, ENG_RESP_ENOMEM.
 */
eng_resp_status eng_resp_feed(eng_resp *p, const uint8_t *buf, size_t n, size_t *used);

/*
 * Inside a bulk payload: set *dst to where the next payload bytes go and
 * return how many are still wanted; 0 (and *dst NULL) anywhere else. The
 * caller may write up to that many bytes there, then eng_resp_commit them.
 */
size_t eng_resp_room(eng_resp *p, uint8_t **dst);

/* n bytes (at most what eng_resp_room returned) were written at its *dst. */
void eng_resp_commit(eng_resp *p, size_t n);

/* Free the payload buffer (if any) and return to the zeroed state. */
void eng_resp_reset(eng_resp *p);

#endif
