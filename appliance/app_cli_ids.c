/* cipherdex get, delete and list-ids: items by id. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_cli.h"

static void print_get(const cli *x, const Cipherdex__V1__GetResponse *gr)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < gr->n_items; i++) {
        const Cipherdex__V1__Item *it = gr->items[i];
        bool found = i < gr->n_found && gr->found[i];
        json_t *o = json_pack("{s:o,s:b}", "id", cli_jstr(it->id), "found", found);
        if (it->n_vector) {
            json_t *v = json_array();
            for (size_t k = 0; k < it->n_vector; k++)
                json_array_append_new(v, json_real(it->vector[k]));
            json_object_set_new(o, "vector", v);
        }
        if (it->metadata.len)
            json_object_set_new(o, "metadata", cli_jstr(it->metadata));
        if (it->contents.len)
            json_object_set_new(o, "contents_bytes", json_integer((json_int_t)it->contents.len));
        json_array_append_new(arr, o);
        if (!x->json)
            printf("%-40.*s %s%s%.*s\n", (int)it->id.len, it->id.data,
                   found ? "found" : "not found", it->metadata.len ? "  " : "",
                   (int)it->metadata.len, it->metadata.len ? (const char *)it->metadata.data : "");
    }
    if (x->json)
        cli_print_json(json_pack("{s:o,s:I}", "items", arr, "version", (json_int_t)gr->version));
    else
        json_decref(arr);
}

/* get and delete: INDEX ID... [--include ...]. */
static int by_ids(cli *x, cli_args *a, const char *what)
{
    if (a->i >= a->n)
        return cli_usage("%s needs an index name", what);
    const char *index = a->v[a->i++];
    unsigned inc = 0;
    const char **ids = calloc((size_t)a->n + 1, sizeof(*ids));
    size_t n = 0;
    for (; a->i < a->n; a->i++) {
        if (!strcmp(a->v[a->i], "--include"))
            inc = cli_include_flags(cli_opt_value(a, "--include"));
        else
            ids[n++] = a->v[a->i];
    }
    if (!n) {
        free(ids);
        return cli_usage("%s needs at least one id", what);
    }
    bool get = !strcmp(what, "get");
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
        print_get(x, resp->get);
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
            if (!cli_parse_u32(cli_opt_value(a, o), &limit))
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
