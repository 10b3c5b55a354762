/*
 * Envelopes and their rendering.  The renderer walks a compiled template
 * through the two-pass writer: no JSON library, no allocation, and the
 * measuring pass runs exactly the code of the writing pass.
 */
#include <string.h>

#include "apigw_json.h"
#include "apigw_envelope.h"
#include "apigw_template.h"


void
apigw_envelope_init(apigw_envelope_t *e, const apigw_catalog_t *cat,
    apigw_err_id_t id)
{
    const apigw_catalog_entry_t  *c;

    memset(e, 0, sizeof(apigw_envelope_t));

    if (cat == NULL) {
        cat = apigw_catalog_defaults();
    }

    if ((unsigned) id >= APIGW_E__COUNT) {
        id = APIGW_E_INTERNAL_ERROR;
    }

    c = &cat->entries[id];

    e->code = c->code;
    e->type = c->type;
    e->title = c->title;
    e->message = c->message;
    e->doc_url = c->doc_url;
    e->status = c->status;
}


/* A detail set twice keeps one slot, so rendered objects never repeat keys. */
static apigw_detail_t *
apigw_envelope_slot(apigw_envelope_t *e, const char *name)
{
    apigw_detail_t  *d;
    size_t           i;

    for (i = 0; i < e->ndetails; i++) {
        if (strcmp(e->details[i].name, name) == 0) {
            return &e->details[i];
        }
    }

    if (e->ndetails == APIGW_MAX_DETAILS) {
        return NULL;
    }

    d = &e->details[e->ndetails++];
    d->name = name;

    return d;
}


void
apigw_envelope_detail_int(apigw_envelope_t *e, const char *name,
    long long v)
{
    apigw_detail_t  *d;

    d = apigw_envelope_slot(e, name);
    if (d == NULL) {
        return;
    }

    d->kind = APIGW_DETAIL_INT;
    d->num = v;
    d->str.len = 0;
    d->str.data = NULL;
}


void
apigw_envelope_detail_str(apigw_envelope_t *e, const char *name,
    const unsigned char *p, size_t len)
{
    apigw_detail_t  *d;

    d = apigw_envelope_slot(e, name);
    if (d == NULL) {
        return;
    }

    d->kind = APIGW_DETAIL_STR;
    d->num = 0;
    d->str.len = len;
    d->str.data = (unsigned char *) p;
}


static const apigw_detail_t *
apigw_envelope_find(const apigw_envelope_t *e, const unsigned char *name,
    size_t len)
{
    size_t  i;

    for (i = 0; i < e->ndetails; i++) {
        if (strlen(e->details[i].name) == len
            && memcmp(e->details[i].name, name, len) == 0)
        {
            return &e->details[i];
        }
    }

    return NULL;
}


static void
apigw_render_detail_value(apigw_writer_t *w, const apigw_detail_t *d)
{
    if (d->kind == APIGW_DETAIL_INT) {
        apigw_w_int(w, d->num);

    } else {
        apigw_w_string(w, d->str.data, d->str.len);
    }
}


/*
 * The message, with {name} replaced by that detail.  Cutting the text at
 * ASCII braces cannot split a UTF-8 sequence, so escaping it piecewise
 * gives the same bytes as escaping it whole.
 */
static void
apigw_render_message(apigw_writer_t *w, const apigw_envelope_t *e)
{
    const unsigned char   *p, *q, *end, *run;
    const apigw_detail_t  *d;

    apigw_w_raw(w, "\"", 1);

    if (e->message_literal || e->message.len == 0) {
        apigw_w_escaped(w, e->message.data, e->message.len);
        apigw_w_raw(w, "\"", 1);
        return;
    }

    p = e->message.data;
    end = p + e->message.len;
    run = p;

    while (p < end) {
        if (*p != '{') {
            p++;
            continue;
        }

        for (q = p + 1; q < end && *q != '}' && *q != '{'; q++) {
            /* void */
        }

        d = NULL;

        if (q < end && *q == '}' && q > p + 1) {
            d = apigw_envelope_find(e, p + 1, (size_t) (q - p - 1));
        }

        if (d == NULL) {
            p++;
            continue;
        }

        apigw_w_escaped(w, run, (size_t) (p - run));

        if (d->kind == APIGW_DETAIL_INT) {
            apigw_w_int(w, d->num);
        } else {
            apigw_w_escaped(w, d->str.data, d->str.len);
        }

        p = q + 1;
        run = p;
    }

    apigw_w_escaped(w, run, (size_t) (end - run));
    apigw_w_raw(w, "\"", 1);
}


static void
apigw_render_details(apigw_writer_t *w, const apigw_envelope_t *e)
{
    size_t  i;

    apigw_w_raw(w, "{", 1);

    for (i = 0; i < e->ndetails; i++) {
        if (i != 0) {
            apigw_w_raw(w, ",", 1);
        }

        apigw_w_string(w, (const unsigned char *) e->details[i].name,
                       strlen(e->details[i].name));
        apigw_w_raw(w, ":", 1);
        apigw_render_detail_value(w, &e->details[i]);
    }

    apigw_w_raw(w, "}", 1);
}


static void
apigw_render_errors(apigw_writer_t *w, const apigw_envelope_t *e)
{
    const apigw_field_error_t  *fe;
    size_t                      i;

    apigw_w_raw(w, "[", 1);

    for (i = 0; i < e->nerrors; i++) {
        fe = &e->errors[i];

        if (i != 0) {
            apigw_w_raw(w, ",", 1);
        }

        apigw_w_lit(w, "{\"field\":");
        apigw_w_string(w, fe->field.data, fe->field.len);
        apigw_w_lit(w, ",\"message\":");
        apigw_w_string(w, fe->message.data, fe->message.len);

        if (fe->code.len != 0) {
            apigw_w_lit(w, ",\"code\":");
            apigw_w_string(w, fe->code.data, fe->code.len);
        }

        apigw_w_raw(w, "}", 1);
    }

    apigw_w_raw(w, "]", 1);
}


static int
apigw_render_var_present(const apigw_tnode_t *n, const apigw_envelope_t *e)
{
    switch (n->var) {

    case APIGW_TV_REQUEST_ID:
        return e->request_id.len != 0;

    case APIGW_TV_CORRELATION_ID:
        return e->status >= 500 && e->request_id.len != 0;

    case APIGW_TV_DOC_URL:
        return e->doc_url.len != 0 || e->doc_base.len != 0;

    case APIGW_TV_PARAM:
        return e->param.len != 0;

    case APIGW_TV_DETAILS:
        return e->ndetails != 0;

    case APIGW_TV_DETAIL:
        return apigw_envelope_find(e, n->detail.data, n->detail.len) != NULL;

    case APIGW_TV_ERRORS:
        return e->nerrors != 0 && e->errors != NULL;

    default:
        return 1;
    }
}


static int
apigw_render_present(const apigw_tnode_t *n, const apigw_envelope_t *e)
{
    if (n->kind != APIGW_TN_VAR) {
        return 1;
    }

    return apigw_render_var_present(n, e) || n->text.len != 0;
}


static void
apigw_render_var(apigw_writer_t *w, const apigw_tnode_t *n,
    const apigw_envelope_t *e)
{
    if (!apigw_render_var_present(n, e)) {
        apigw_w_raw(w, n->text.data, n->text.len);
        return;
    }

    switch (n->var) {

    case APIGW_TV_CODE:
        apigw_w_string(w, e->code.data, e->code.len);
        break;

    case APIGW_TV_MESSAGE:
        apigw_render_message(w, e);
        break;

    case APIGW_TV_TYPE:
        apigw_w_string(w, e->type.data, e->type.len);
        break;

    case APIGW_TV_TITLE:
        apigw_w_string(w, e->title.data, e->title.len);
        break;

    case APIGW_TV_STATUS:
        apigw_w_int(w, e->status);
        break;

    case APIGW_TV_REQUEST_ID:
    case APIGW_TV_CORRELATION_ID:
        apigw_w_string(w, e->request_id.data, e->request_id.len);
        break;

    case APIGW_TV_DOC_URL:
        if (e->doc_url.len != 0) {
            apigw_w_string(w, e->doc_url.data, e->doc_url.len);
            break;
        }

        apigw_w_raw(w, "\"", 1);
        apigw_w_escaped(w, e->doc_base.data, e->doc_base.len);
        apigw_w_escaped(w, e->code.data, e->code.len);
        apigw_w_raw(w, "\"", 1);
        break;

    case APIGW_TV_PARAM:
        apigw_w_string(w, e->param.data, e->param.len);
        break;

    case APIGW_TV_DETAILS:
        apigw_render_details(w, e);
        break;

    case APIGW_TV_DETAIL:
        apigw_render_detail_value(w,
            apigw_envelope_find(e, n->detail.data, n->detail.len));
        break;

    case APIGW_TV_ERRORS:
        apigw_render_errors(w, e);
        break;
    }
}


/* A spread detail named like a member of the object would repeat a key. */
static int
apigw_render_spread_clash(const apigw_tnode_t *obj, const char *name)
{
    size_t  i;

    for (i = 0; i < obj->nmembers; i++) {
        if (obj->members[i].value != NULL
            && strcmp(obj->members[i].name, name) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static void
apigw_render_node(apigw_writer_t *w, const apigw_tnode_t *n,
    const apigw_envelope_t *e)
{
    const apigw_tmember_t  *m;
    const apigw_detail_t   *d;
    size_t                  i, j;
    int                     first;

    switch (n->kind) {

    case APIGW_TN_RAW:
        apigw_w_raw(w, n->text.data, n->text.len);
        return;

    case APIGW_TN_VAR:
        apigw_render_var(w, n, e);
        return;

    case APIGW_TN_ARRAY:
        apigw_w_raw(w, "[", 1);
        first = 1;

        for (i = 0; i < n->nmembers; i++) {
            if (!apigw_render_present(n->members[i].value, e)) {
                continue;
            }

            if (!first) {
                apigw_w_raw(w, ",", 1);
            }
            first = 0;

            apigw_render_node(w, n->members[i].value, e);
        }

        apigw_w_raw(w, "]", 1);
        return;

    case APIGW_TN_OBJECT:
        apigw_w_raw(w, "{", 1);
        first = 1;

        for (i = 0; i < n->nmembers; i++) {
            m = &n->members[i];

            if (m->value == NULL) {
                for (j = 0; j < e->ndetails; j++) {
                    d = &e->details[j];

                    if (apigw_render_spread_clash(n, d->name)) {
                        continue;
                    }

                    if (!first) {
                        apigw_w_raw(w, ",", 1);
                    }
                    first = 0;

                    apigw_w_string(w, (const unsigned char *) d->name,
                                   strlen(d->name));
                    apigw_w_raw(w, ":", 1);
                    apigw_render_detail_value(w, d);
                }

                continue;
            }

            if (!apigw_render_present(m->value, e)) {
                continue;
            }

            if (!first) {
                apigw_w_raw(w, ",", 1);
            }
            first = 0;

            apigw_w_raw(w, m->key.data, m->key.len);
            apigw_render_node(w, m->value, e);
        }

        apigw_w_raw(w, "}", 1);
        return;
    }
}


size_t
apigw_envelope_render(const apigw_template_t *t, const apigw_envelope_t *e,
    unsigned char *out)
{
    apigw_writer_t  w;

    w.buf = out;
    w.len = 0;

    apigw_render_node(&w, t->root, e);

    return w.len;
}
