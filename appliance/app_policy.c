/* The daemon's access policy (app_policy.h). */
#include "app_policy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_ini.h"
#include "cdx_log.h"

struct app_policy {
    pthread_rwlock_t lock; /* readers: checks; writer: the swap */
    pol_policy *p;
    uint64_t loads;
    char last_error[512];
};

static cdx_err on_key(void *user, unsigned line, const char *section, const char *key,
                      const char *value)
{
    return pol_builder_key(user, line, section, key, value);
}

cdx_err app_policy_build(const app_config *cfg, pol_policy **out)
{
    *out = NULL;
    pol_builder *b = NULL;
    cdx_err err = pol_builder_new(&b);
    if (err)
        return err;
    if (cfg->policy[0] && (err = app_ini_load(cfg->policy, on_key, b))) {
        pol_builder_free(b);
        return err;
    }
    for (size_t i = 0; i < cfg->n_admins; i++)
        if ((err = pol_builder_admin(b, cfg->admins[i]))) {
            pol_builder_free(b);
            return err;
        }
    if ((err = pol_builder_finish(b, out)) == CDX_ERR_CONFIG) {
        char why[400];
        snprintf(why, sizeof(why), "%s", cdx_err_detail());
        return cdx_fail(CDX_ERR_CONFIG, "%s: %s", cfg->policy, why);
    }
    return err;
}

static void log_loaded(const app_config *cfg, const pol_policy *p, const char *event)
{
    size_t rules, roles, admins, ops;
    pol_policy_counts(p, &rules, &roles, &admins, &ops);
    cdx_log(CDX_LOG_INFO, event, "file=\"%s\" grants=%zu roles=%zu admins=%zu operators=%zu",
            cfg->policy[0] ? cfg->policy : "(none: [server] admins only)", rules, roles, admins,
            ops);
}

cdx_err app_policy_new(const app_config *cfg, app_policy **out)
{
    *out = NULL;
    app_policy *h = calloc(1, sizeof(*h));
    if (!h)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    cdx_err err = app_policy_build(cfg, &h->p);
    if (err) {
        free(h);
        return err;
    }
    pthread_rwlock_init(&h->lock, NULL);
    h->loads = 1;
    log_loaded(cfg, h->p, "policy_loaded");
    *out = h;
    return CDX_OK;
}

void app_policy_free(app_policy *h)
{
    if (!h)
        return;
    pol_policy_free(h->p);
    pthread_rwlock_destroy(&h->lock);
    free(h);
}

cdx_err app_policy_reload(app_policy *h, const app_config *cfg)
{
    pol_policy *np = NULL;
    cdx_err err = app_policy_build(cfg, &np);
    pthread_rwlock_wrlock(&h->lock);
    pol_policy *old = NULL;
    if (err) {
        snprintf(h->last_error, sizeof(h->last_error), "%s", cdx_err_detail());
    } else {
        old = h->p;
        h->p = np;
        h->loads++;
        h->last_error[0] = '\0';
    }
    pthread_rwlock_unlock(&h->lock);
    pol_policy_free(old);
    if (err)
        cdx_log(CDX_LOG_ERROR, "policy_reload_failed", "kept=previous msg=\"%s\"", h->last_error);
    else
        log_loaded(cfg, np, "policy_reloaded");
    return err;
}

bool app_policy_allows(app_policy *h, const char *principal, pol_need need, const char *index)
{
    if (!h)
        return need == POL_NEED_NONE;
    pthread_rwlock_rdlock(&h->lock);
    bool ok = pol_allows(h->p, principal, need, index);
    pthread_rwlock_unlock(&h->lock);
    return ok;
}

bool app_policy_sees(app_policy *h, const char *principal, const char *index)
{
    if (!h)
        return false;
    pthread_rwlock_rdlock(&h->lock);
    bool ok = pol_sees(h->p, principal, index);
    pthread_rwlock_unlock(&h->lock);
    return ok;
}

bool app_policy_issuer_ok(app_policy *h, const char *principal, const uint8_t issuer[32])
{
    if (!h)
        return true;
    pthread_rwlock_rdlock(&h->lock);
    bool ok = pol_issuer_ok(h->p, principal, issuer);
    pthread_rwlock_unlock(&h->lock);
    return ok;
}

void app_policy_limits(app_policy *h, const char *principal, pol_limits *out)
{
    if (!h) {
        memset(out, 0, sizeof(*out));
        return;
    }
    pthread_rwlock_rdlock(&h->lock);
    pol_limits_of(h->p, principal, out);
    pthread_rwlock_unlock(&h->lock);
}

void app_policy_status(app_policy *h, uint64_t *loads, char *last_error, size_t cap)
{
    if (!h) {
        *loads = 0;
        snprintf(last_error, cap, "no policy");
        return;
    }
    pthread_rwlock_rdlock(&h->lock);
    *loads = h->loads;
    snprintf(last_error, cap, "%s", h->last_error);
    pthread_rwlock_unlock(&h->lock);
}
