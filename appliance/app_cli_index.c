/*
 * cipherdex health, and the index lifecycle:
 * index create|list|describe|delete|train|accept-rollback.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app_cli.h"
#include "cdx_hex.h"
#include "hsm_keyfile.h"
#include "hsm_secmem.h"
#include "cdx_limits.h"
#include "cdx_time.h"
#include "pol_evidence.h"

#include <time.h>

#include <openssl/rand.h>
#include <openssl/x509.h>

int cli_health(cli *x, cli_args *a)
{
    (void)a;
    wire_response *w = NULL;
    cdx_err e = app_client_health(x->c, &w);
    if (!w)
        return cli_fail(x, e);
    const Cipherdex__V1__HealthResponse *hr = wire_response_msg(w)->health;
    if (hr) {
        /* A server older than HealthResponse.status sends none: it had no "degraded". */
        char status[CDX_ENUM_TEXT_MAX + 1] = "ok";
        if (hr->status.len && hr->status.len <= CDX_ENUM_TEXT_MAX)
            snprintf(status, sizeof(status), "%.*s", (int)hr->status.len, hr->status.data);
        if (x->json) {
            json_t *warn = json_array();
            for (size_t i = 0; i < hr->n_warnings; i++)
                json_array_append_new(warn, cli_jstr(hr->warnings[i]));
            cli_print_json(json_pack(
                "{s:s,s:b,s:b,s:s%,s:I,s:o,s:i,s:I}", "status", e ? "unhealthy" : status,
                "token_ok", hr->token_ok, "store_ok", hr->store_ok, "server_version",
                (const char *)hr->server_version.data, hr->server_version.len, "uptime_s",
                (json_int_t)hr->uptime_s, "warnings", warn, "indexes_in_rollback",
                (int)hr->indexes_in_rollback, "max_frame_bytes", (json_int_t)hr->max_frame_bytes));
        } else {
            printf("status: %s\ntoken: %s\nstore: %s\nserver: %.*s\nuptime: %" PRIu64 " s\n",
                   e ? "unhealthy" : status, hr->token_ok ? "ok" : "unreachable",
                   hr->store_ok ? "ok" : "unreachable", (int)hr->server_version.len,
                   hr->server_version.data, hr->uptime_s);
            if (hr->max_frame_bytes) /* 0: a server older than the field */
                printf("max frame: %" PRIu64 " bytes\n", hr->max_frame_bytes);
            if (hr->indexes_in_rollback)
                printf("indexes in rollback: %u\n", hr->indexes_in_rollback);
            for (size_t i = 0; i < hr->n_warnings; i++)
                printf("warning: %.*s\n", (int)hr->warnings[i].len, hr->warnings[i].data);
        }
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

/* key_provenance as JSON: attributes as {"name": true|false|null (n/a)}. */
static json_t *prov_json(const Cipherdex__V1__KeyProvenance *p)
{
    if (!p)
        return json_null();
    json_t *attrs = json_object();
    for (size_t i = 0; i < p->n_attributes; i++) {
        const Cipherdex__V1__KeyAttribute *a = p->attributes[i];
        char name[CDX_ENUM_TEXT_MAX + 1];
        snprintf(name, sizeof(name), "%.*s", (int)a->name.len, (const char *)a->name.data);
        bool yes = a->value.len == 3 && !memcmp(a->value.data, "yes", 3);
        bool no = a->value.len == 2 && !memcmp(a->value.data, "no", 2);
        json_object_set_new(attrs, name, yes ? json_true() : no ? json_false() : json_null());
    }
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:b}", "origin", cli_jstr(p->origin), "kek_name",
                     cli_jstr(p->kek_name), "born_on_token", cli_jstr(p->born_on_token),
                     "token_serial", cli_jstr(p->token_serial), "token_model",
                     cli_jstr(p->token_model), "attributes", attrs, "copyable_not_enforced",
                     p->copyable_not_enforced);
}

/* One line: "unwrapped with KEK kms-main; existed outside the token". */
static void prov_line(const Cipherdex__V1__KeyProvenance *p, char *buf, size_t cap)
{
    if (!p || !p->origin.len) {
        snprintf(buf, cap, "unknown");
        return;
    }
    const char *born = "";
    if (p->born_on_token.len == 3 && !memcmp(p->born_on_token.data, "yes", 3))
        born = "; generated on the token, never outside it";
    else if (p->born_on_token.len == 2 && !memcmp(p->born_on_token.data, "no", 2))
        born = "; existed outside the token";
    else if (p->born_on_token.len == 3 && !memcmp(p->born_on_token.data, "n/a", 3))
        born = "; the token does not say whether it was generated there";
    snprintf(buf, cap, "%.*s%s%.*s%s", (int)p->origin.len, (const char *)p->origin.data,
             p->kek_name.len ? " with KEK " : "", (int)p->kek_name.len,
             p->kek_name.len ? (const char *)p->kek_name.data : "", born);
}

static json_t *info_json(const Cipherdex__V1__IndexInfo *x)
{
    char id[33] = "", kcv[17] = "";
    cli_hex(x->id, id);
    cli_hex(x->kcv, kcv);
    json_t *j = json_pack(
        "{s:o,s:o,s:s,s:i,s:o,s:o,s:i,s:i,s:I,s:I,s:s,s:o,s:b,s:o,s:i,s:I,s:o,s:o}", "name",
        cli_jstr(x->name), "state", cli_jstr(x->state), "id", id, "dimension", x->dimension,
        "metric", cli_jstr(x->metric), "index_type", cli_jstr(x->index_type), "n_lists", x->n_lists,
        "n_clusters", x->n_clusters, "count", (json_int_t)x->count, "version",
        (json_int_t)x->version, "kcv", kcv, "key_source", cli_jstr(x->key_source), "key_owned",
        x->key_owned, "key_provenance", prov_json(x->key_provenance), "segments", x->segments,
        "created_ms", (json_int_t)x->created_ms, "status",
        x->status.len ? cli_jstr(x->status) : json_string("ok"), "status_message",
        /* json_stringn(NULL, 0) fails: an empty field may have no data */
        x->status_message.len ? cli_jstr(x->status_message) : json_string(""));
    if (j) /* key epochs and a pending rotation (docs/ROTATION.md) */
        json_object_update_new(j, json_pack("{s:i,s:i,s:i,s:I,s:I,s:I,s:I}", "key_epoch",
                                            (int)x->key_epoch, "min_epoch", (int)x->min_epoch,
                                            "rotate_to", (int)x->rotate_to, "rotate_done",
                                            (json_int_t)x->rotate_done, "rotate_total",
                                            (json_int_t)x->rotate_total, "rotate_started_ms",
                                            (json_int_t)x->rotate_started_ms, "rotated_ms",
                                            (json_int_t)x->rotated_ms));
    if (j) { /* the token key's generation and a pending new key (rotate --new-key) */
        char nk[17] = "";
        if (x->new_key_kcv.len == CDX_KCV_LEN)
            cli_hex(x->new_key_kcv, nk);
        json_object_update_new(j, json_pack("{s:i,s:i,s:s}", "key_generation",
                                            (int)x->key_generation, "new_key_generation",
                                            (int)x->new_key_generation, "new_key_kcv", nk));
    }
    return j;
}

/* The store-use and maintenance fields (IndexInfo 19-23, 34), added to info_json's object. */
static json_t *info_json_store(const Cipherdex__V1__IndexInfo *x, json_t *j)
{
    if (j) {
        json_object_set_new(j, "dead_rows", json_integer((json_int_t)x->dead_rows));
        json_object_set_new(j, "segment_bytes", json_integer((json_int_t)x->segment_bytes));
        json_object_set_new(j, "records_waiting", json_integer((json_int_t)x->records_waiting));
        json_object_set_new(j, "retired_bytes", json_integer((json_int_t)x->retired_bytes));
        json_object_set_new(j, "last_compaction_ms",
                            json_integer((json_int_t)x->last_compaction_ms));
        json_object_set_new(j, "last_sweep_ms", json_integer((json_int_t)x->last_sweep_ms));
    }
    return j;
}

/* "2026-12-06 15:04:05 UTC", or "never (on this appliance, since it started)". */
static void when(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!ms || !gmtime_r(&t, &tm) || !strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm))
        snprintf(out, cap, "never (on this appliance, since it started)");
}

static void info_print_store(const Cipherdex__V1__IndexInfo *x)
{
    if (x->status.len && !(x->status.len == 2 && !memcmp(x->status.data, "ok", 2))) {
        printf("status:      %.*s\nwhat to do:  %.*s\n", (int)x->status.len, x->status.data,
               (int)x->status_message.len,
               x->status_message.len ? (const char *)x->status_message.data : "");
        return;
    }
    char c[64], s[64];
    when(x->last_compaction_ms, c, sizeof(c));
    when(x->last_sweep_ms, s, sizeof(s));
    printf("dead rows:   %" PRIu64 "%s\nsegment bytes: %" PRIu64 "\n", x->dead_rows,
           x->dead_rows ? " (erased by `cipherdex index compact`)" : "", x->segment_bytes);
    if (x->last_sweep_ms) /* measured by this appliance's last sweep */
        printf("waiting for sweep: %" PRIu64 " records, %" PRIu64
               " bytes (retired: deleted after [engine] gc_grace_ms)\n",
               x->records_waiting, x->retired_bytes);
    else
        printf("waiting for sweep: not measured yet (no sweep of this index on this appliance "
               "since it started; `cipherdex index compact` runs one)\n");
    printf("last compaction: %s\nlast sweep:  %s\n", c, s);
}

static void info_print(const Cipherdex__V1__IndexInfo *x)
{
    char id[33] = "", kcv[17] = "";
    cli_hex(x->id, id);
    cli_hex(x->kcv, kcv);
    printf("name:        %.*s\nid:          %s\nstate:       %.*s\ndimension:   %u\n"
           "metric:      %.*s\ntype:        %.*s\nlists:       %u (trained clusters: %u)\n"
           "items:       %" PRIu64 "\nversion:     %" PRIu64 "\nsegments:    %u\n"
           "key:         %.*s%s, KCV %s\n",
           (int)x->name.len, x->name.data, id, (int)x->state.len, x->state.data, x->dimension,
           (int)x->metric.len, x->metric.data, (int)x->index_type.len, x->index_type.data,
           x->n_lists, x->n_clusters, x->count, x->version, x->segments, (int)x->key_source.len,
           x->key_source.data, x->key_owned ? " (destroyed with the index)" : " (adopted)", kcv);
    char line[256];
    prov_line(x->key_provenance, line, sizeof(line));
    printf("key origin:  %s\n", line);
    printf("key:         generation %u", x->key_generation);
    if (x->new_key_generation && x->new_key_kcv.len == CDX_KCV_LEN) {
        char nk[17] = "";
        cli_hex(x->new_key_kcv, nk);
        printf("; new key generation %u (KCV %s) pending for the rotation", x->new_key_generation,
               nk);
    }
    printf("\n");
    printf("key epoch:   %u (minimum readable %u)", x->key_epoch, x->min_epoch);
    if (x->rotated_ms)
        printf(", last rotated %" PRIu64 " ms after the Unix epoch", x->rotated_ms);
    printf("\n");
    if (x->rotate_to) {
        printf("rotating:    to epoch %u, asked %" PRIu64 " ms after the Unix epoch", x->rotate_to,
               x->rotate_started_ms);
        if (x->rotate_total)
            printf("; %" PRIu64 " of %" PRIu64 " records re-encrypted in the current attempt",
                   x->rotate_done, x->rotate_total);
        printf(" (reads and writes go on; `cipherdex index rotate %.*s --wait` waits for it)\n",
               (int)x->name.len, x->name.data);
    }
    const Cipherdex__V1__KeyProvenance *p = x->key_provenance;
    if (p && (p->token_serial.len || p->token_model.len))
        printf("token:       %.*s, serial %.*s\n", (int)p->token_model.len,
               p->token_model.len ? (const char *)p->token_model.data : "",
               (int)p->token_serial.len,
               p->token_serial.len ? (const char *)p->token_serial.data : "");
    if (p && p->copyable_not_enforced)
        printf("warning:     the token does not honour CKA_COPYABLE ([hsm] copyable = "
               "unsupported): a PIN holder could copy this key into a derivable one\n");
    if (p && p->n_attributes) {
        printf("attributes: ");
        for (size_t i = 0; i < p->n_attributes; i++)
            printf(" %.*s=%.*s", (int)p->attributes[i]->name.len,
                   (const char *)p->attributes[i]->name.data, (int)p->attributes[i]->value.len,
                   (const char *)p->attributes[i]->value.data);
        printf("\n");
    }
}

static void info_out(const cli *x, const Cipherdex__V1__IndexInfo *i)
{
    if (x->json) {
        cli_print_json(info_json_store(i, info_json(i)));
    } else {
        info_print(i);
        info_print_store(i);
    }
}

static int index_list(cli *x)
{
    wire_response *w = NULL;
    cdx_err e = app_client_list_indexes(x->c, &w);
    if (!e) {
        const Cipherdex__V1__ListIndexesResponse *lr = wire_response_msg(w)->list_indexes;
        if (x->json) {
            json_t *arr = json_array();
            for (size_t i = 0; i < lr->n_indexes; i++)
                json_array_append_new(arr, info_json(lr->indexes[i]));
            cli_print_json(json_pack("{s:o,s:i}", "indexes", arr, "unreadable_entries",
                                     (int)lr->unreadable_entries));
        } else {
            printf("%-32s %-9s %-6s %-9s %-17s %-7s %10s %8s  %-10s %s\n", "NAME", "STATE", "DIM",
                   "TYPE", "METRIC", "LISTS", "ITEMS", "VERSION", "KEY", "STATUS");
            size_t broken = 0;
            for (size_t i = 0; i < lr->n_indexes; i++) {
                const Cipherdex__V1__IndexInfo *ii = lr->indexes[i];
                bool ok =
                    !ii->status.len || (ii->status.len == 2 && !memcmp(ii->status.data, "ok", 2));
                broken += !ok;
                const Cipherdex__V1__KeyProvenance *p = ii->key_provenance;
                bool po = p && p->origin.len;
                /* STATE: the lifecycle state (creating, ready, rotating, deleting), or error when
                 * the appliance cannot serve the index (STATUS says why, the lines below how) */
                printf("%-32.*s %-9.*s %-6u %-9.*s %-17.*s %-7u %10" PRIu64 " %8" PRIu64
                       "  %-10.*s %.*s\n",
                       (int)ii->name.len, ii->name.data,
                       !ok             ? 5
                       : ii->state.len ? (int)ii->state.len
                                       : 1,
                       !ok             ? "error"
                       : ii->state.len ? (const char *)ii->state.data
                                       : "-",
                       ii->dimension, (int)ii->index_type.len, ii->index_type.data,
                       (int)ii->metric.len, ii->metric.data, ii->n_clusters, ii->count, ii->version,
                       po ? (int)p->origin.len : 7, po ? (const char *)p->origin.data : "unknown",
                       ok ? 2 : (int)ii->status.len, ok ? "ok" : (const char *)ii->status.data);
            }
            /* The reasons after the table, so the columns stay readable. */
            for (size_t i = 0; broken && i < lr->n_indexes; i++) {
                const Cipherdex__V1__IndexInfo *ii = lr->indexes[i];
                if (ii->status_message.len)
                    printf("%.*s: %.*s\n", (int)ii->name.len, ii->name.data,
                           (int)ii->status_message.len, ii->status_message.data);
            }
            if (lr->unreadable_entries)
                printf("%u catalog entries failed authentication and are not listed (tampered or "
                       "corrupt; the daemon log names their store keys: "
                       "catalog_entry_unreadable)\n",
                       lr->unreadable_entries);
        }
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

/* The CLI's secret arena: one key file (CDX_KEY_FILE_MAX) and its decoded bytes. */
#define KEY_ARENA (64 * 1024)

static int index_create(cli *x, cli_args *a, const char *name)
{
    uint8_t wrapped[CDX_WRAPPED_KEY_LEN + 1], kid[CDX_ID_LEN];
    const char *key_file = NULL;
    app_index_spec spec = {.name = name, .metric = "euclidean", .index_type = "ivfflat"};
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--dim") || !strcmp(o, "--dimension")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &spec.dimension))
                return cli_usage("--dim needs a number");
        } else if (!strcmp(o, "--metric")) {
            spec.metric = cli_opt_value(a, o);
        } else if (!strcmp(o, "--type")) {
            spec.index_type = cli_opt_value(a, o);
        } else if (!strcmp(o, "--lists")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &spec.n_lists))
                return cli_usage("--lists needs a number");
        } else if (!strcmp(o, "--unwrap-kek")) {
            spec.kek_name = cli_opt_value(a, o);
            spec.key_source = APP_KEY_UNWRAP;
        } else if (!strcmp(o, "--wrapped-file")) {
            FILE *f = fopen(cli_opt_value(a, o), "rb");
            size_t n = f ? fread(wrapped, 1, sizeof(wrapped), f) : 0;
            if (f)
                fclose(f);
            if (n != CDX_WRAPPED_KEY_LEN)
                return cli_usage("--wrapped-file must hold exactly %d bytes", CDX_WRAPPED_KEY_LEN);
            spec.wrapped = wrapped;
            spec.wrapped_len = n;
        } else if (!strcmp(o, "--adopt-key")) {
            if (cdx_hex_decode(cli_opt_value(a, o), kid, CDX_ID_LEN))
                return cli_usage("--adopt-key needs the key id: 32 hex digits");
            spec.adopt_id = kid;
            spec.key_source = APP_KEY_ADOPT;
        } else if (!strcmp(o, "--key-file")) {
            key_file = cli_opt_value(a, o);
            spec.key_source = APP_KEY_IMPORT;
        } else {
            return cli_usage("index create: unknown option %s", o);
        }
    }
    if (!spec.dimension)
        return cli_usage("index create needs --dim N");
    uint8_t *key = NULL;
    cdx_err e = CDX_OK;
    wire_response *w = NULL;
    if (key_file) {
        /* Locked memory, like the admin tool; the file must be 0600 like a PIN file. */
        if ((e = hsm_secmem_init(KEY_ARENA, false)))
            return cli_fail(x, e);
        if ((e = hsm_key_file_read(key_file, &key)))
            goto out;
        spec.import_key = key;
    }
    e = app_client_create_index(x->c, &spec, &w);
    if (!e)
        info_out(x, wire_response_msg(w)->create_index->index);
out:
    wire_response_free(w);
    if (key_file) {
        hsm_secmem_free(key); /* wipes */
        hsm_secmem_shutdown();
    }
    return e ? cli_fail(x, e) : 0;
}

static int index_describe(cli *x, const char *name)
{
    wire_response *w = NULL;
    cdx_err e = app_client_describe_index(x->c, name, &w);
    if (!e)
        info_out(x, wire_response_msg(w)->describe_index->index);
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

static int index_delete(cli *x, cli_args *a, const char *name)
{
    uint8_t id[CDX_ID_LEN];
    bool have = false;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--confirm")) {
            if (cdx_hex_decode(cli_opt_value(a, o), id, CDX_ID_LEN))
                return cli_usage("--confirm needs the index id (32 hex digits, from "
                                 "`index describe`)");
            have = true;
        } else {
            return cli_usage("index delete: unknown option %s", o);
        }
    }
    if (!have)
        return cli_usage("index delete destroys the index key and all data: repeat "
                         "with --confirm <index id from `index describe`>");
    wire_response *w = NULL;
    cdx_err e = app_client_delete_index(x->c, name, id, &w);
    if (!e) {
        const Cipherdex__V1__DeleteIndexResponse *dr = wire_response_msg(w)->delete_index;
        if (x->json)
            cli_print_json(json_pack("{s:s,s:b,s:b,s:o}", "index", name, "deleted", 1,
                                     "key_destroyed", dr->key_destroyed, "key_remains",
                                     cli_jstr(dr->key_remains)));
        else {
            printf("deleted %s; %s\n", name,
                   dr->key_destroyed ? "its key was destroyed on the token (crypto-shredded: "
                                       "leftover or restored records can never be read)"
                                     : "its key was not destroyed");
            if (dr->key_remains.len)
                printf("remains: %.*s\n", (int)dr->key_remains.len, dr->key_remains.data);
        }
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

static int index_train(cli *x, cli_args *a, const char *name)
{
    app_train_opts t = {0};
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--lists")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &t.n_lists))
                return cli_usage("--lists needs a number");
        } else if (!strcmp(o, "--iters")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &t.max_iters))
                return cli_usage("--iters needs a number");
        } else if (!strcmp(o, "--seed")) {
            if (!cdx_parse_u64(cli_opt_value(a, o), &t.seed))
                return cli_usage("--seed needs a number");
        } else if (!strcmp(o, "--tolerance")) {
            t.tolerance = strtof(cli_opt_value(a, o), NULL);
        } else if (!strcmp(o, "--max-points-per-list")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &t.max_points_per_list))
                return cli_usage("--max-points-per-list needs a number");
        } else {
            return cli_usage("index train: unknown option %s", o);
        }
    }
    double t0 = cdx_mono_s();
    wire_response *w = NULL;
    cdx_err e = app_client_train(x->c, name, &t, &w);
    if (!e) {
        uint64_t ver = wire_response_msg(w)->train->version;
        x->json ? cli_print_json(json_pack("{s:s,s:I,s:f}", "index", name, "version",
                                           (json_int_t)ver, "seconds", cdx_mono_s() - t0))
                : (void)printf("trained %s: version %" PRIu64 " in %.2f s\n", name, ver,
                               cdx_mono_s() - t0);
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

/*
 * index rotate NAME [--new-key] [--wait] (admin): start a key rotation; with
 * --wait, run it to completion on this request and say what it did.
 */
static int index_rotate(cli *x, cli_args *a, const char *name)
{
    bool wait = false, new_key = false;
    for (; a->i < a->n; a->i++) {
        if (!strcmp(a->v[a->i], "--wait"))
            wait = true;
        else if (!strcmp(a->v[a->i], "--new-key"))
            new_key = true;
        else
            return cli_usage("index rotate: unknown option %s", a->v[a->i]);
    }
    wire_response *w = NULL;
    cdx_err e = app_client_rotate(x->c, name, wait, new_key, &w);
    if (!e) {
        const Cipherdex__V1__RotateResponse *rr = wire_response_msg(w)->rotate;
        const Cipherdex__V1__IndexInfo *ii = rr->index;
        if (x->json) {
            json_t *j =
                json_pack("{s:s,s:o,s:i,s:i,s:i,s:i,s:I,s:I,s:I,s:I,s:o}", "index", name, "state",
                          cli_jstr(ii->state), "key_epoch", (int)ii->key_epoch, "rotate_to",
                          (int)ii->rotate_to, "from_epoch", (int)rr->from_epoch, "to_epoch",
                          (int)rr->to_epoch, "items", (json_int_t)rr->items, "contents",
                          (json_int_t)rr->contents, "version", (json_int_t)rr->version, "ms",
                          (json_int_t)rr->ms, "key_remains", cli_jstr(rr->key_remains));
            cli_print_json(j);
        } else if (!wait)
            printf("rotating %s: key epoch %u -> %u started; every record is re-encrypted in the "
                   "background (`cipherdex index describe %s` shows the progress)\n",
                   name, ii->key_epoch, ii->rotate_to, name);
        else if (rr->version)
            printf("rotated %s: key epoch %u -> %u, %" PRIu64 " items and %" PRIu64
                   " contents re-encrypted in %.2f s (version %" PRIu64
                   "); the old epoch's records are swept after [engine] gc_grace_ms\n",
                   name, rr->from_epoch, rr->to_epoch, rr->items, rr->contents,
                   (double)rr->ms / 1000.0, rr->version);
        else
            printf("rotated %s: key epoch %u -> %u (completed in the background while this "
                   "waited)\n",
                   name, rr->from_epoch, rr->to_epoch);
        if (!x->json && rr->key_remains.len)
            printf("old key, once the rotation completes: %.*s\n", (int)rr->key_remains.len,
                   rr->key_remains.data);
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

/* index compact NAME (admin): merge segments, sweep what is old enough, say what remains. */
static int index_compact(cli *x, cli_args *a, const char *name)
{
    if (a->i < a->n)
        return cli_usage("index compact: unknown option %s", a->v[a->i]);
    wire_response *w = NULL;
    cdx_err e = app_client_compact(x->c, name, &w);
    if (!e) {
        const Cipherdex__V1__CompactResponse *cr = wire_response_msg(w)->compact;
        if (x->json)
            cli_print_json(json_pack(
                "{s:s,s:i,s:I,s:I,s:I,s:I,s:I}", "index", name, "clusters_compacted",
                (int)cr->clusters_compacted, "version", (json_int_t)cr->version, "records_deleted",
                (json_int_t)cr->records_deleted, "records_waiting", (json_int_t)cr->records_waiting,
                "retired_bytes", (json_int_t)cr->retired_bytes, "next_delete_ms",
                (json_int_t)cr->next_delete_ms));
        else {
            printf("compacted %s: %u cluster%s merged", name, cr->clusters_compacted,
                   cr->clusters_compacted == 1 ? "" : "s");
            if (cr->version)
                printf(" (version %" PRIu64 ")", cr->version);
            printf("; %" PRIu64 " store records deleted", cr->records_deleted);
            if (cr->records_waiting)
                printf(", %" PRIu64 " (%" PRIu64 " bytes) kept until their grace ends ([engine] "
                       "gc_grace_ms; run again then)",
                       cr->records_waiting, cr->retired_bytes);
            printf("\n");
        }
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

/* index purge (appliance admin): remove what no live index owns. */
static int index_purge(cli *x, cli_args *a)
{
    if (a->i < a->n)
        return cli_usage("index purge: unknown option %s", a->v[a->i]);
    wire_response *w = NULL;
    cdx_err e = app_client_purge(x->c, &w);
    if (!e) {
        uint64_t rm = wire_response_msg(w)->purge->removed;
        x->json
            ? cli_print_json(json_pack("{s:I}", "removed", (json_int_t)rm))
            : (void)printf("purged: %" PRIu64 " store record%s removed\n", rm, rm == 1 ? "" : "s");
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

static int index_accept_rollback(cli *x, cli_args *a, const char *name)
{
    uint64_t ver = 0;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--version")) {
            if (!cdx_parse_u64(cli_opt_value(a, o), &ver) || !ver)
                return cli_usage("--version needs the store's head version (a number >= 1)");
        } else {
            return cli_usage("index accept-rollback: unknown option %s", o);
        }
    }
    if (!ver)
        return cli_usage("index accept-rollback loses the writes after the store's version: "
                         "check it with `index list` and repeat with --version <that version>");
    wire_response *w = NULL;
    cdx_err e = app_client_accept_rollback(x->c, name, ver, &w);
    if (!e) {
        const Cipherdex__V1__AcceptRollbackResponse *ar = wire_response_msg(w)->accept_rollback;
        if (x->json)
            cli_print_json(json_pack("{s:s,s:I,s:I,s:b}", "index", name, "previous_version",
                                     (json_int_t)ar->previous_version, "version",
                                     (json_int_t)ar->version, "accepted",
                                     ar->previous_version > ar->version));
        else if (ar->previous_version > ar->version)
            printf("accepted %s at version %" PRIu64 " (this appliance had seen %" PRIu64
                   "; the writes in between are lost)\n",
                   name, ar->version, ar->previous_version);
        else
            printf("%s is not in rollback (version %" PRIu64 "): nothing changed\n", name,
                   ar->version);
    }
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

/*
 * index attest NAME [--nonce HEX] [--out FILE]: ask for a statement, check it
 * against the public key the appliance sent (a convenience: a verifier pins
 * the key out of band; docs/ATTESTATION.md), write the DER and summarise.
 */
static int index_attest(cli *x, cli_args *a, const char *name)
{
    uint8_t nonce[CDX_ATTEST_NONCE_MAX];
    size_t nonce_len = 0;
    const char *out_path = NULL;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--nonce")) {
            const char *h = cli_opt_value(a, o);
            size_t hl = strlen(h);
            if (hl % 2 || hl / 2 < CDX_ATTEST_NONCE_MIN || hl / 2 > CDX_ATTEST_NONCE_MAX ||
                cdx_hex_decode(h, nonce, hl / 2))
                return cli_usage("--nonce needs %d to %d bytes in hex", CDX_ATTEST_NONCE_MIN,
                                 CDX_ATTEST_NONCE_MAX);
            nonce_len = hl / 2;
        } else if (!strcmp(o, "--out")) {
            out_path = cli_opt_value(a, o);
        } else {
            return cli_usage("index attest: unknown option %s", o);
        }
    }
    if (!nonce_len) { /* a fresh one; a verifier who cares brings its own */
        nonce_len = 32;
        if (RAND_bytes(nonce, (int)nonce_len) != 1)
            return cli_fail(x, cdx_fail(CDX_ERR_INTERNAL, "no random nonce"));
    }
    wire_response *w = NULL;
    pol_ev *ev = NULL;
    EVP_PKEY *pk = NULL;
    cdx_err e = app_client_attest(x->c, name, nonce, nonce_len, &w);
    const Cipherdex__V1__AttestResponse *ar = e ? NULL : wire_response_msg(w)->attest;
    if (!e && !ar)
        e = cdx_fail(CDX_ERR_INTERNAL, "the answer has no attest body");
    if (!e && out_path) {
        FILE *f = fopen(out_path, "wb");
        if (!f || fwrite(ar->evidence.data, 1, ar->evidence.len, f) != ar->evidence.len)
            e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s: cannot write the evidence", out_path);
        if (f && fclose(f) && !e)
            e = cdx_fail(CDX_ERR_INVALID_ARGUMENT, "%s: cannot write the evidence", out_path);
    }
    const unsigned char *sp = ar ? ar->attestation_public_key.data : NULL;
    if (!e && !(pk = d2i_PUBKEY(NULL, &sp, (long)ar->attestation_public_key.len)))
        e = cdx_fail(CDX_ERR_INTEGRITY, "the attestation public key sent does not parse");
    if (!e)
        e = pol_ev_parse(ar->evidence.data, ar->evidence.len, &ev);
    if (!e)
        e = pol_ev_verify(ev, pk, nonce, nonce_len, (int64_t)time(NULL), CDX_ATTEST_MAX_AGE_S);
    if (!e) {
        char kid[65], nhex[2 * CDX_ATTEST_NONCE_MAX + 1];
        cli_hex(ar->attestation_key_id, kid);
        cdx_hex_encode(nonce, nonce_len, nhex);
        json_t *claims = json_object();
        if (!x->json)
            printf("attestation of %s: signature ok with the appliance's key %s\n"
                   "(pin that key: check it against `cipherdex-hsm attest-key show` or your "
                   "CA's certificate)\nnonce: %s\n",
                   name, kid, nhex);
        for (size_t i = 0; i < pol_ev_count(ev); i++) {
            const pol_ev_value *v = pol_ev_at(ev, i);
            char key[96], val[512];
            snprintf(key, sizeof(key), "%s.%s", pol_ev_entity_name(pol_ev_claim_entity(v->claim)),
                     pol_ev_claim_name(v->claim));
            pol_ev_value_text(v, val, sizeof(val));
            if (x->json) {
                json_t *prev = json_object_get(claims, key);
                if (v->claim == POL_EV_ALLOWED_MECH) {
                    if (!prev)
                        json_object_set_new(claims, key, prev = json_array());
                    json_array_append_new(prev, json_string(val));
                } else {
                    json_object_set_new(claims, key, json_string(val));
                }
            } else {
                printf("  %-34s %s\n", key, val);
            }
        }
        if (x->json)
            cli_print_json(json_pack("{s:s,s:s,s:s,s:s?,s:I,s:o}", "index", name,
                                     "attestation_key_id", kid, "nonce", nhex, "out", out_path,
                                     "evidence_bytes", (json_int_t)ar->evidence.len, "claims",
                                     claims));
        else
            json_decref(claims);
    }
    EVP_PKEY_free(pk);
    pol_ev_free(ev);
    wire_response_free(w);
    return e ? cli_fail(x, e) : 0;
}

int cli_index(cli *x, cli_args *a)
{
    if (a->i >= a->n)
        return cli_usage(
            "index needs create, list, describe, delete, train, compact, accept-rollback, purge "
            "or attest");
    const char *sub = a->v[a->i++];
    if (!strcmp(sub, "list"))
        return index_list(x);
    if (!strcmp(sub, "purge"))
        return index_purge(x, a);
    if (a->i >= a->n)
        return cli_usage("index %s needs an index name", sub);
    const char *name = a->v[a->i++];
    if (!strcmp(sub, "create"))
        return index_create(x, a, name);
    if (!strcmp(sub, "describe"))
        return index_describe(x, name);
    if (!strcmp(sub, "delete"))
        return index_delete(x, a, name);
    if (!strcmp(sub, "train"))
        return index_train(x, a, name);
    if (!strcmp(sub, "accept-rollback"))
        return index_accept_rollback(x, a, name);
    if (!strcmp(sub, "compact"))
        return index_compact(x, a, name);
    if (!strcmp(sub, "rotate"))
        return index_rotate(x, a, name);
    if (!strcmp(sub, "attest"))
        return index_attest(x, a, name);
    return cli_usage("index: unknown subcommand %s", sub);
}
