/* cipherdex get, delete and list-ids: items by id. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_cli.h"
#include "cdx_limits.h"

/* One get item or query hit as JSON: the included fields (left out when not asked for). */
static void add_fields(json_t *o, unsigned inc, const Cipherdex__V1__Item *it)
{
    if (inc & APP_INCLUDE_METADATA)
        cli_jset_metadata(o, it->metadata);
    if (inc & APP_INCLUDE_CONTENTS)
        cli_jset_contents(o, it->contents);
    if (inc & APP_INCLUDE_VECTORS)
        json_object_set_new(o, "vector", cli_jvector(it->vector, it->n_vector));
}

static void print_get(const cli *x, const Cipherdex__V1__GetResponse *gr, unsigned inc,
                      size_t width)
{
    if (x->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < gr->n_items; i++) {
            const Cipherdex__V1__Item *it = gr->items[i];
            bool found = i < gr->n_found && gr->found[i];
            json_t *o = json_pack("{s:o,s:b}", "id", cli_jstr(it->id), "found", found);
            if (found)
                add_fields(o, inc, it);
            json_array_append_new(arr, o);
        }
        cli_print_json(json_pack("{s:o,s:I}", "items", arr, "version", (json_int_t)gr->version));
        return;
    }
    const char *header[5] = {"ID", "FOUND"};
    int nc = 2;
    if (inc & APP_INCLUDE_METADATA)
        header[nc++] = "METADATA";
    if (inc & APP_INCLUDE_CONTENTS)
        header[nc++] = "CONTENTS";
    if (inc & APP_INCLUDE_VECTORS)
        header[nc++] = "VECTOR";
    cli_table *t = cli_table_new(nc, header);
    bool cut = false;
    for (size_t i = 0; t && i < gr->n_items; i++) {
        const Cipherdex__V1__Item *it = gr->items[i];
        bool found = i < gr->n_found && gr->found[i];
        char *row[5];
        int c = 0;
        row[c++] = cli_cell_text(it->id, 0, &cut);
        row[c++] = strdup(found ? "found" : "not found");
        if (inc & APP_INCLUDE_METADATA)
            row[c++] = found ? cli_cell_text(it->metadata, width, &cut) : strdup("");
        if (inc & APP_INCLUDE_CONTENTS)
            row[c++] = found ? cli_cell_contents(it->contents, width, &cut) : strdup("");
        if (inc & APP_INCLUDE_VECTORS)
            row[c++] = found ? cli_cell_vector(it->vector, it->n_vector, width, &cut) : strdup("");
        cli_table_add(t, row);
    }
    if (t)
        cli_table_print(t, stdout);
    cli_table_free(t);
    cli_cut_note(cut, width);
}

/* get and delete: INDEX ID... [--include ...] [--full]. */
static int by_ids(cli *x, cli_args *a, const char *what)
{
    if (a->i >= a->n)
        return cli_usage("%s needs an index name", what);
    const char *index = a->v[a->i++];
    bool get = !strcmp(what, "get");
    unsigned inc = APP_INCLUDE_METADATA; /* get's default; --include none: ids only */
    size_t width = CDX_CLI_CELL_WIDTH;
    const char **ids = calloc((size_t)a->n + 1, sizeof(*ids));
    size_t n = 0;
    bool only_ids = false; /* after "--": ids that start with "--" */
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (only_ids || strncmp(o, "--", 2)) {
            ids[n++] = o;
        } else if (!strcmp(o, "--")) {
            only_ids = true;
        } else if (get && !strcmp(o, "--include")) {
            int rc = cli_include_opt(cli_opt_value(a, o), &inc);
            if (rc) {
                free(ids);
                return rc;
            }
        } else if (get && !strcmp(o, "--full")) {
            width = 0;
        } else {
            free(ids);
            return cli_usage("%s: unknown option %s (ids that start with -- go after --)", what, o);
        }
    }
    if (!n) {
        free(ids);
        return cli_usage("%s needs at least one id", what);
    }
    wire_response *w = NULL;
    cdx_err e = get ? app_client_get(x->c, index, ids, n, inc, 0, &w)
                    : app_client_delete(x->c, index, ids, n, &w);
    free(ids);
    if (e) {
        wire_response_free(w);
        return cli_fail(x, e);
    }
    const Cipherdex__V1__Response *resp = wire_response_msg(w);
    if (resp->body_case == CIPHERDEX__V1__RESPONSE__BODY_DELETE)
        x->json
            ? cli_print_json(json_pack("{s:I,s:I}", "deleted", (json_int_t)resp->delete_->deleted,
                                       "version", (json_int_t)resp->delete_->version))
            : (void)printf("deleted %" PRIu64 " of %zu ids, version %" PRIu64 "\n",
                           resp->delete_->deleted, n, resp->delete_->version);
    else
        print_get(x, resp->get, inc, width);
    wire_response_free(w);
    return 0;
}

int cli_get(cli *x, cli_args *a)
{
    return by_ids(x, a, "get");
}

int cli_delete(cli *x, cli_args *a)
{
    return by_ids(x, a, "delete");
}

int cli_list_ids(cli *x, cli_args *a)
{
    if (a->i >= a->n)
        return cli_usage("list-ids needs an index name");
    const char *index = a->v[a->i++], *cursor = NULL;
    uint32_t limit = 1000;
    bool all = false;
    for (; a->i < a->n; a->i++) {
        const char *o = a->v[a->i];
        if (!strcmp(o, "--cursor"))
            cursor = cli_opt_value(a, o);
        else if (!strcmp(o, "--all"))
            all = true;
        else if (!strcmp(o, "--limit")) {
            if (!cdx_parse_u32(cli_opt_value(a, o), &limit))
                return cli_usage("--limit needs a number");
        } else
            return cli_usage("list-ids: unknown option %s", o);
    }
    json_t *arr = json_array();
    char *next = cursor ? strdup(cursor) : NULL;
    cdx_err e = CDX_OK;
    do {
        wire_response *w = NULL;
        if ((e = app_client_list_ids(x->c, index, next, limit, &w))) {
            wire_response_free(w);
            break;
        }
        const Cipherdex__V1__ListIdsResponse *lr = wire_response_msg(w)->list_ids;
        for (size_t i = 0; i < lr->n_ids; i++) {
            if (x->json)
                json_array_append_new(arr, cli_jstr(lr->ids[i]));
            else
                printf("%.*s\n", (int)lr->ids[i].len, lr->ids[i].data);
        }
        free(next);
        next = lr->next_cursor.len
                   ? strndup((const char *)lr->next_cursor.data, lr->next_cursor.len)
                   : NULL;
        wire_response_free(w);
    } while (all && next);
    if (!e && x->json) {
        json_t *o = json_pack("{s:o}", "ids", arr);
        if (next)
            json_object_set_new(o, "next_cursor", json_string(next));
        cli_print_json(o);
    } else {
        json_decref(arr);
        if (!e && next && !all)
            fprintf(stderr, "more: --cursor %s\n", next);
    }
    free(next);
    return e ? cli_fail(x, e) : 0;
}
