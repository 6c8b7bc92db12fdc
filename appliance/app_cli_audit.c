/*
 * cipherdex audit tail [-n N] [--follow]: the audit trail's last records and
 * its state, for operators ([appliance] operators or admins; docs/AUDIT.md).
 * The records are printed as the trail holds them (verify them offline with
 * cipherdex-hsm audit verify: this command only shows them).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "app_cli.h"
#include "cdx_limits.h"

/* One answer: the records after `after` (all when 0); *last_seq becomes the newest seen. */
static cdx_err show(cli *x, uint32_t n, uint64_t after, uint64_t *last_seq, bool header)
{
    wire_response *w = NULL;
    cdx_err e = app_client_audit_tail(x->c, n, &w);
    if (e) {
        wire_response_free(w);
        return e;
    }
    const Cipherdex__V1__AuditTailResponse *t = wire_response_msg(w)->audit_tail;
    if (x->json) {
        json_t *recs = json_array();
        for (size_t i = 0; i < t->n_records; i++)
            json_array_append_new(recs, cli_jstr(t->records[i]));
        cli_print_json(json_pack("{s:o,s:I,s:I,s:o,s:o}", "state", cli_jstr(t->state), "last_seq",
                                 (json_int_t)t->last_seq, "lost", (json_int_t)t->lost, "error",
                                 cli_jstr(t->error), "records", recs));
    } else {
        if (header) {
            printf("# audit trail: %.*s, last record %llu", (int)t->state.len, t->state.data,
                   (unsigned long long)t->last_seq);
            if (t->lost)
                printf(", %llu records lost (fail open)", (unsigned long long)t->lost);
            if (t->error.len)
                printf(", error: %.*s", (int)t->error.len, t->error.data);
            printf("\n");
        }
        for (size_t i = 0; i < t->n_records; i++) {
            unsigned long long seq = 0;
            if (sscanf((const char *)t->records[i].data, "cdxa1 %llu", &seq) == 1 && seq <= after)
                continue;
            printf("%.*s\n", (int)t->records[i].len, t->records[i].data);
        }
        fflush(stdout);
    }
    *last_seq = t->last_seq;
    wire_response_free(w);
    return CDX_OK;
}

int cli_audit(cli *x, cli_args *a)
{
    if (a->i >= a->n || strcmp(a->v[a->i], "tail"))
        return cli_usage("audit needs a subcommand: tail");
    a->i++;
    uint32_t n = CDX_AUDIT_TAIL_DEFAULT;
    bool follow = false;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "-n") || !strcmp(o, "--lines")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &n) || n == 0 || n > CDX_AUDIT_TAIL_MAX)
                return cli_usage("%s: a number of records, 1 to %u", o, CDX_AUDIT_TAIL_MAX);
        } else if (!strcmp(o, "-f") || !strcmp(o, "--follow")) {
            follow = true;
        } else {
            return cli_usage("audit tail: unknown option %s", o);
        }
    }
    if (follow && x->json)
        return cli_usage("audit tail: --follow prints lines; it does not combine with --json");
    uint64_t last = 0;
    cdx_err e = show(x, n, 0, &last, true);
    /* --follow: ask again every second for what came since (checkpoints keep it moving) */
    while (!e && follow) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
        uint64_t before = last;
        e = show(x, CDX_AUDIT_TAIL_MAX, before, &last, false);
    }
    return e ? cli_fail(x, e) : 0;
}
