/*
 * The CNI plugins `percale` and `percale-ipam`, compiled: the same shim as percale_cni/shim.py,
 * in C, so a pod's ADD does not pay for starting an interpreter.
 *
 * A container runtime execs a CNI plugin for every ADD, DEL, CHECK, STATUS and GC. The Python
 * shim costs about 10 ms before the agent sees the request (6.4 ms starting python3 -IS, 4 ms
 * loading the file); this one costs well under a millisecond. Cilium and Calico keep the same
 * cost near zero with a small Go binary for the same reason.
 *
 * What it does is specified in PROTOCOL.md and is exactly what shim.py does: the same request to
 * the agent, the same answers it gives itself (VERSION; codes 4, 6, 7, 11, 50, 999), with the same
 * messages, and the agent's answer printed verbatim. The tests in tests/unit/test_cni_shim.py
 * and the CNI tests in tests/netns run both shims. Where a `details` text comes from a Python
 * exception (a JSON syntax error, a bad answer), this one says the same thing in its own words.
 *
 * Built by `python -m percale_cni.build` (scripts/dev.sh does it; it needs only a C compiler and
 * libc): cc -O2 -o percale-cni shim.c. Installed under both plugin names by
 * `percalectl cni install`, which is also how the name chooses the plugin (argv[0]).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_VERSION "1.1.0"
#define DEFAULT_SOCKET "/var/run/percale/cni.sock"
#define SUPPORTED_VERSIONS "[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
/* A live agent accepts at once; an ADD may wait in the agent while conflicts are retried. */
#define CONNECT_TIMEOUT_S 2
#define ANSWER_TIMEOUT_S 120
/* The largest network configuration passed on (the agent's request limit, cni_types.py). */
#define MAX_CONFIG_BYTES (1 << 20)
/* Python's json gives up (RecursionError) near its recursion limit of 1000. */
#define MAX_DEPTH 1000
#define TOO_DEEP "the network configuration on stdin nests too deeply to read"

enum { INVALID_ENVIRONMENT = 4, DECODING_FAILURE = 6, INVALID_CONFIG = 7, TRY_AGAIN_LATER = 11,
       NOT_AVAILABLE = 50, INTERNAL = 999 };

/* -- growable byte buffers ------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static void out_of_memory(void)
{
    fputs("percale: out of memory\n", stderr);
    exit(1);
}

static void buf_put(buf_t *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            out_of_memory();
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_printf(buf_t *b, const char *format, ...)
{
    char small[256];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(small, sizeof small, format, args);
    va_end(args);
    if (n < (int)sizeof small) {
        buf_put(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big)
        out_of_memory();
    va_start(args, format);
    vsnprintf(big, (size_t)n + 1, format, args);
    va_end(args);
    buf_put(b, big, (size_t)n);
    free(big);
}

/* -- text: UTF-8 as Python decodes it, JSON strings as Python encodes them ------------------- */

/* Length of the UTF-8 sequence at s (strict, as Python's decoder: no overlong forms, no
 * surrogates, nothing past U+10FFFF), or 0 when it is not one. Sets *cp to the code point. */
static size_t utf8_sequence(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, min = 0x80, *cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, min = 0x800, *cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, min = 0x10000, *cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        *cp = (*cp << 6) | (s[i] & 0x3F);
    }
    if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF))
        return 0;
    return len;
}

static int utf8_valid(const unsigned char *s, size_t n)
{
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_sequence(s + i, n - i, &cp);
        if (!len)
            return 0;
        i += len;
    }
    return 1;
}

/* A surrogate this shim itself wrote as three bytes (a lone \uD800-\uDFFF from a JSON string):
 * ED A0..BF xx. */
static size_t surrogate_sequence(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n >= 3 && s[0] == 0xED && s[1] >= 0xA0 && s[1] <= 0xBF && (s[2] & 0xC0) == 0x80) {
        *cp = 0xD000 | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    return 0;
}

/* Append s as a JSON string the way Python's json.dumps (ensure_ascii) writes it. Bytes that are
 * not UTF-8 become \udcXX, as Python's surrogateescape decoding of the environment makes them. */
static void json_string(buf_t *b, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    buf_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_sequence(s + i, n - i, &cp);
        if (!len && !(len = surrogate_sequence(s + i, n - i, &cp))) {
            cp = 0xDC00 | s[i];
            len = 1;
        }
        i += len;
        switch (cp) {
        case '"': buf_str(b, "\\\""); continue;
        case '\\': buf_str(b, "\\\\"); continue;
        case '\n': buf_str(b, "\\n"); continue;
        case '\r': buf_str(b, "\\r"); continue;
        case '\t': buf_str(b, "\\t"); continue;
        case '\b': buf_str(b, "\\b"); continue;
        case '\f': buf_str(b, "\\f"); continue;
        }
        if (cp >= 0x20 && cp < 0x7F) {
            char c = (char)cp;
            buf_put(b, &c, 1);
        } else if (cp < 0x10000) {
            buf_printf(b, "\\u%04x", cp);
        } else {
            cp -= 0x10000;
            buf_printf(b, "\\u%04x\\u%04x", 0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF));
        }
    }
    buf_put(b, "\"", 1);
}

/* Append s as Python's repr() of the string would show it, for messages that quote a value. */
static void python_repr(buf_t *b, const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    char quote = strchr(text, '\'') && !strchr(text, '"') ? '"' : '\'';
    buf_put(b, &quote, 1);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_sequence(s + i, n - i, &cp);
        if (!len) {
            buf_printf(b, "\\udc%02x", s[i]);
            i++;
            continue;
        }
        if (cp == (uint32_t)quote || cp == '\\') {
            buf_printf(b, "\\%c", (char)cp);
        } else if (cp == '\n') {
            buf_str(b, "\\n");
        } else if (cp == '\r') {
            buf_str(b, "\\r");
        } else if (cp == '\t') {
            buf_str(b, "\\t");
        } else if (cp < 0x20 || cp == 0x7F) {
            buf_printf(b, "\\x%02x", cp);
        } else {
            buf_put(b, s + i, len);
        }
        i += len;
    }
    buf_put(b, &quote, 1);
}

/* -- JSON: validation as strict as Python's json.loads, and the few members the shim reads --- */

typedef enum { J_ERROR, J_OBJECT, J_ARRAY, J_STRING, J_NUMBER, J_TRUE, J_FALSE, J_NULL,
               J_OTHER_NUMBER } jtype;

typedef struct {
    const char *text;
    size_t len, pos;
    int too_deep;
} parser_t;

static void skip_space(parser_t *p)
{
    while (p->pos < p->len && strchr(" \t\n\r", p->text[p->pos]) && p->text[p->pos])
        p->pos++;
}

static int literal(parser_t *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos >= n && memcmp(p->text + p->pos, word, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hex4(parser_t *p, uint32_t *value)
{
    if (p->len - p->pos < 4)
        return 0;
    *value = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p->text[p->pos + i]);
        if (h < 0)
            return 0;
        *value = (*value << 4) | (uint32_t)h;
    }
    p->pos += 4;
    return 1;
}

static void put_code_point(buf_t *out, uint32_t cp)
{
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = 0xC0 | (cp >> 6), u[1] = 0x80 | (cp & 0x3F), n = 2;
    } else if (cp < 0x10000) {
        /* A lone surrogate is written as three bytes too (json_string reads them back). */
        u[0] = 0xE0 | (cp >> 12), u[1] = 0x80 | ((cp >> 6) & 0x3F), u[2] = 0x80 | (cp & 0x3F), n = 3;
    } else {
        u[0] = 0xF0 | (cp >> 18), u[1] = 0x80 | ((cp >> 12) & 0x3F);
        u[2] = 0x80 | ((cp >> 6) & 0x3F), u[3] = 0x80 | (cp & 0x3F), n = 4;
    }
    buf_put(out, u, n);
}

/* A string starting at the opening quote; its decoded text goes to out (if given). The text is
 * valid UTF-8 already. Control characters are refused, as json.loads(strict=True) does. */
static int parse_string(parser_t *p, buf_t *out)
{
    p->pos++;
    while (p->pos < p->len) {
        unsigned char c = (unsigned char)p->text[p->pos];
        if (c == '"') {
            p->pos++;
            if (out)
                buf_put(out, "", 0);
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c != '\\') {
            size_t start = p->pos;
            while (p->pos < p->len && p->text[p->pos] != '"' && p->text[p->pos] != '\\' &&
                   (unsigned char)p->text[p->pos] >= 0x20)
                p->pos++;
            if (out)
                buf_put(out, p->text + start, p->pos - start);
            continue;
        }
        if (++p->pos >= p->len)
            return 0;
        char escape = p->text[p->pos++];
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *simple = strchr(from, escape);
        if (simple && escape) {
            if (out)
                buf_put(out, to + (simple - from), 1);
            continue;
        }
        if (escape != 'u')
            return 0;
        uint32_t cp, low;
        if (!hex4(p, &cp))
            return 0;
        /* A high surrogate followed by an escaped low one is one code point, as in Python. */
        if (cp >= 0xD800 && cp <= 0xDBFF && p->len - p->pos >= 6 && p->text[p->pos] == '\\' &&
            p->text[p->pos + 1] == 'u') {
            size_t mark = p->pos;
            p->pos += 2;
            if (hex4(p, &low) && low >= 0xDC00 && low <= 0xDFFF)
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            else
                p->pos = mark;
        }
        if (out)
            put_code_point(out, cp);
    }
    return 0;
}

static int digits(parser_t *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9')
        p->pos++;
    return p->pos > start;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?, and Python's NaN, Infinity, -Infinity.
 * J_NUMBER for an integer, J_OTHER_NUMBER for the rest. */
static jtype parse_number(parser_t *p)
{
    if (literal(p, "NaN") || literal(p, "Infinity") || literal(p, "-Infinity"))
        return J_OTHER_NUMBER;
    if (p->text[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->len)
        return J_ERROR;
    if (p->text[p->pos] == '0')
        p->pos++;
    else if (!digits(p))
        return J_ERROR;
    jtype kind = J_NUMBER;
    if (p->pos + 1 < p->len && p->text[p->pos] == '.' && p->text[p->pos + 1] >= '0' &&
        p->text[p->pos + 1] <= '9') {
        p->pos++;
        digits(p);
        kind = J_OTHER_NUMBER;
    }
    if (p->pos < p->len && (p->text[p->pos] == 'e' || p->text[p->pos] == 'E')) {
        size_t mark = p->pos++;
        if (p->pos < p->len && (p->text[p->pos] == '-' || p->text[p->pos] == '+'))
            p->pos++;
        if (digits(p))
            kind = J_OTHER_NUMBER;
        else
            p->pos = mark; /* "1e" is the number 1 followed by junk, as Python reads it */
    }
    return kind;
}

/* Called for each member of the top-level object: its decoded key and where its value lies. */
typedef void (*member_fn)(void *state, const buf_t *key, jtype kind, size_t start, size_t end);

static jtype parse_value(parser_t *p, int depth, member_fn visit, void *state);

static int parse_members(parser_t *p, int depth, member_fn visit, void *state, int object)
{
    char close = object ? '}' : ']';
    p->pos++;
    skip_space(p);
    if (p->pos < p->len && p->text[p->pos] == close) {
        p->pos++;
        return 1;
    }
    buf_t key = {0};
    int ok = 0;
    for (;;) {
        skip_space(p);
        if (object) {
            key.len = 0;
            if (p->pos >= p->len || p->text[p->pos] != '"' || !parse_string(p, visit ? &key : NULL))
                break;
            skip_space(p);
            if (p->pos >= p->len || p->text[p->pos] != ':')
                break;
            p->pos++;
            skip_space(p);
        }
        size_t start = p->pos;
        jtype kind = parse_value(p, depth + 1, NULL, NULL);
        if (kind == J_ERROR)
            break;
        if (object && visit)
            visit(state, &key, kind, start, p->pos);
        skip_space(p);
        if (p->pos < p->len && p->text[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->text[p->pos] == close) {
            p->pos++;
            ok = 1;
        }
        break;
    }
    free(key.data);
    return ok;
}

static jtype parse_value(parser_t *p, int depth, member_fn visit, void *state)
{
    if (depth > MAX_DEPTH) {
        p->too_deep = 1;
        return J_ERROR;
    }
    if (p->pos >= p->len)
        return J_ERROR;
    switch (p->text[p->pos]) {
    case '{':
        return parse_members(p, depth, visit, state, 1) ? J_OBJECT : J_ERROR;
    case '[':
        return parse_members(p, depth, NULL, NULL, 0) ? J_ARRAY : J_ERROR;
    case '"':
        return parse_string(p, NULL) ? J_STRING : J_ERROR;
    case 't':
        return literal(p, "true") ? J_TRUE : J_ERROR;
    case 'f':
        return literal(p, "false") ? J_FALSE : J_ERROR;
    case 'n':
        return literal(p, "null") ? J_NULL : J_ERROR;
    default:
        return parse_number(p);
    }
}

/* The whole text as one JSON value, surrounded by nothing but white space. */
static jtype parse_document(parser_t *p, member_fn visit, void *state)
{
    skip_space(p);
    jtype kind = parse_value(p, 0, visit, state);
    skip_space(p);
    return kind != J_ERROR && p->pos == p->len ? kind : J_ERROR;
}

/* The decoded value of the string that lies between start and end (quotes included). */
static void string_value(const char *text, size_t start, size_t end, buf_t *out)
{
    parser_t p = {text, end, start, 0};
    out->len = 0;
    parse_string(&p, out);
}

/* -- the network configuration ------------------------------------------------------------- */

typedef struct {
    const char *text;
    jtype version_kind, socket_kind;
    size_t version_start, version_end, socket_start, socket_end;
} conf_t;

static void remember_member(void *state, const buf_t *key, jtype kind, size_t start, size_t end)
{
    conf_t *conf = state;
    /* Duplicate keys: the last one counts, as in a Python dict. */
    if (key->len == 10 && memcmp(key->data, "cniVersion", 10) == 0) {
        conf->version_kind = kind, conf->version_start = start, conf->version_end = end;
    } else if (key->len == 12 && memcmp(key->data, "agent_socket", 12) == 0) {
        conf->socket_kind = kind, conf->socket_start = start, conf->socket_end = end;
    }
}

/* -- answers ------------------------------------------------------------------------------- */

static buf_t version; /* the cniVersion of errors: the config's, else DEFAULT_VERSION */

static void write_all(int fd, const char *data, size_t n)
{
    while (n) {
        ssize_t done = write(fd, data, n);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        data += done, n -= (size_t)done;
    }
}

static int fail_n(int code, const char *msg, size_t msg_len, const char *details)
{
    buf_t out = {0};
    buf_str(&out, "{\"cniVersion\": ");
    json_string(&out, version.data, version.len);
    buf_printf(&out, ", \"code\": %d, \"msg\": ", code);
    json_string(&out, msg, msg_len);
    buf_str(&out, ", \"details\": ");
    json_string(&out, details, strlen(details));
    buf_str(&out, "}");
    write_all(1, out.data, out.len);
    return 1;
}

static int fail(int code, const char *msg, const char *details)
{
    return fail_n(code, msg, strlen(msg), details);
}

/* "<before><path><after>": the path in full, even with a NUL in it (shim.py quotes it so). */
static int fail_at(int code, const char *details, const char *before, const buf_t *path,
                   const char *after)
{
    buf_t msg = {0};
    buf_str(&msg, before);
    buf_put(&msg, path->data, path->len);
    buf_str(&msg, after);
    return fail_n(code, msg.data, msg.len, details);
}

static int failf(int code, const char *details, const char *format, ...)
{
    buf_t msg = {0};
    char small[1];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(small, sizeof small, format, args);
    va_end(args);
    msg.data = malloc((size_t)n + 1);
    if (!msg.data)
        out_of_memory();
    va_start(args, format);
    vsnprintf(msg.data, (size_t)n + 1, format, args);
    va_end(args);
    return fail(code, msg.data, details);
}

/* -- the agent ----------------------------------------------------------------------------- */

static const char *reason(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS ? "timed out" : strerror(err);
}

/* Send the request line and read the answer line into *answer. Returns 0, or the exit status
 * after printing the CNI error, with code `unreachable` when the agent cannot be reached or gives
 * no answer (TRY_AGAIN_LATER; NOT_AVAILABLE for STATUS, as shim.py answers). */
static int ask_agent(const buf_t *path, const buf_t *request, buf_t *answer, int unreachable)
{
    const char *not_running = "is percale-node running on this node?";
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (path->len >= sizeof address.sun_path)
        return fail_at(unreachable, not_running, "cannot reach percale-node at ", path,
                       ": AF_UNIX path too long");
    /* The whole name, as Python passes it: a NUL inside ends the name the kernel looks up. */
    memcpy(address.sun_path, path->data, path->len);
    socklen_t length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path->len);
    buf_t why = {0};
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        buf_printf(&why, ": %s", reason(errno));
        return fail_at(unreachable, not_running, "cannot reach percale-node at ", path, why.data);
    }
    /* A unix-socket connect waits for room in the listener's backlog at most SO_SNDTIMEO. */
    struct timeval connect_timeout = {CONNECT_TIMEOUT_S, 0}, answer_timeout = {ANSWER_TIMEOUT_S, 0};
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &connect_timeout, sizeof connect_timeout);
    if (connect(sock, (struct sockaddr *)&address, length) != 0) {
        buf_printf(&why, ": %s", reason(errno));
        close(sock);
        return fail_at(unreachable, not_running, "cannot reach percale-node at ", path, why.data);
    }
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &answer_timeout, sizeof answer_timeout);
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &answer_timeout, sizeof answer_timeout);
    int err = 0;
    for (size_t sent = 0; sent < request->len && !err;) {
        ssize_t n = send(sock, request->data + sent, request->len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR)
            err = errno;
        else if (n > 0)
            sent += (size_t)n;
    }
    char chunk[65536];
    while (!err && !(answer->len && answer->data[answer->len - 1] == '\n')) {
        ssize_t n = recv(sock, chunk, sizeof chunk, 0);
        if (n < 0 && errno != EINTR)
            err = errno;
        else if (n == 0)
            break;
        else if (n > 0)
            buf_put(answer, chunk, (size_t)n);
    }
    close(sock);
    if (err) {
        buf_printf(&why, " did not answer: %s", reason(err));
        return fail_at(unreachable, "see percale-node's log", "percale-node at ", path, why.data);
    }
    size_t i = 0;
    while (i < answer->len && strchr(" \t\n\r\v\f", answer->data[i]) && answer->data[i])
        i++;
    if (i == answer->len)
        return fail_at(unreachable, "see percale-node's log", "percale-node at ", path,
                       " closed the connection without answering");
    return 0;
}

typedef struct {
    jtype code_kind, stdout_kind;
    size_t code_start, code_end, stdout_start, stdout_end;
} answer_t;

static void remember_answer(void *state, const buf_t *key, jtype kind, size_t start, size_t end)
{
    answer_t *answer = state;
    if (key->len == 4 && memcmp(key->data, "code", 4) == 0) {
        answer->code_kind = kind, answer->code_start = start, answer->code_end = end;
    } else if (key->len == 6 && memcmp(key->data, "stdout", 6) == 0) {
        answer->stdout_kind = kind, answer->stdout_start = start, answer->stdout_end = end;
    }
}

/* Print the agent's stdout and return the exit status: 0 when its code is 0, else 1. */
static int relay_answer(const buf_t *path, const buf_t *received)
{
    answer_t answer = {0};
    parser_t p = {received->data, received->len, 0, 0};
    const char *problem = NULL;
    if (!utf8_valid((const unsigned char *)received->data, received->len))
        problem = "it is not UTF-8";
    else if (parse_document(&p, remember_answer, &answer) != J_OBJECT)
        problem = "it is not a JSON object";
    /* code is an integer (true and false count, as Python's bool is an int) and stdout a string. */
    else if (!answer.code_kind || !answer.stdout_kind)
        problem = "it lacks code or stdout";
    else if ((answer.code_kind != J_NUMBER && answer.code_kind != J_TRUE &&
              answer.code_kind != J_FALSE) || answer.stdout_kind != J_STRING)
        problem = "code must be a number and stdout a string";
    if (problem) {
        /* What came, as the first 200 bytes of Python's repr() of it. */
        buf_t details = {0};
        buf_printf(&details, "%s: b'", problem);
        for (size_t i = 0; i < received->len && i < 200; i++) {
            unsigned char c = (unsigned char)received->data[i];
            if (c == '\\' || c == '\'')
                buf_printf(&details, "\\%c", c);
            else if (c == '\n')
                buf_str(&details, "\\n");
            else if (c >= 0x20 && c < 0x7F)
                buf_put(&details, &c, 1);
            else
                buf_printf(&details, "\\x%02x", c);
        }
        buf_put(&details, "'", 1);
        return fail_at(INTERNAL, details.data, "percale-node at ", path,
                       " sent an answer not in PROTOCOL.md's form");
    }
    int zero = answer.code_kind == J_FALSE;
    if (answer.code_kind == J_NUMBER) {
        zero = 1;
        for (size_t i = answer.code_start; i < answer.code_end; i++)
            if (received->data[i] != '0' && received->data[i] != '-')
                zero = 0;
    }
    buf_t out = {0};
    string_value(received->data, answer.stdout_start, answer.stdout_end, &out);
    /* A lone surrogate cannot be written as UTF-8: '?' instead, as Python's "replace" does. */
    for (size_t i = 0; i < out.len; i++) {
        uint32_t cp;
        if (surrogate_sequence((unsigned char *)out.data + i, out.len - i, &cp)) {
            memmove(out.data + i + 1, out.data + i + 3, out.len - i - 3);
            out.data[i] = '?';
            out.len -= 2;
        }
    }
    write_all(1, out.data, out.len);
    return zero ? 0 : 1;
}

/* -- main ---------------------------------------------------------------------------------- */

static const char *env(const char *name)
{
    const char *value = getenv(name);
    return value ? value : "";
}

static void request_field(buf_t *request, const char *name, const char *value, size_t n, int first)
{
    buf_printf(request, "%s\"%s\": ", first ? "{" : ", ", name);
    json_string(request, value, n);
}

static int required(const char *command, const char **names)
{
    if (strcmp(command, "ADD") == 0 || strcmp(command, "CHECK") == 0) {
        names[0] = "CNI_CONTAINERID", names[1] = "CNI_NETNS", names[2] = "CNI_IFNAME";
        return 3;
    }
    if (strcmp(command, "DEL") == 0) {
        names[0] = "CNI_CONTAINERID", names[1] = "CNI_IFNAME";
        return 2;
    }
    if (strcmp(command, "STATUS") == 0 || strcmp(command, "GC") == 0)
        return 0;
    return -1;
}

int main(int argc, char **argv)
{
    const char *name = argc > 0 ? strrchr(argv[0], '/') : NULL;
    name = name ? name + 1 : (argc > 0 ? argv[0] : "");
    const char *plugin = strcmp(name, "percale-ipam") == 0 ? "percale-ipam" : "percale";

    buf_t config = {0};
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        buf_put(&config, chunk, (size_t)n);
    }
    buf_put(&config, "", 0);

    conf_t conf = {.text = config.data};
    parser_t parser = {config.data, config.len, 0, 0};
    int utf8 = utf8_valid((const unsigned char *)config.data, config.len);
    jtype kind = utf8 ? parse_document(&parser, remember_member, &conf) : J_ERROR;
    if (parser.too_deep) {
        /* Where Python's json gives up (RecursionError): shim.py answers the same, at once. */
        buf_str(&version, DEFAULT_VERSION);
        return fail(DECODING_FAILURE, TOO_DEEP, "");
    }
    if (kind == J_OBJECT && conf.version_kind == J_STRING)
        string_value(config.data, conf.version_start, conf.version_end, &version);
    if (!version.len)
        buf_str(&version, DEFAULT_VERSION);

    const char *command = env("CNI_COMMAND");
    if (strcmp(command, "VERSION") == 0) {
        buf_t out = {0};
        buf_str(&out, "{\"cniVersion\": ");
        json_string(&out, version.data, version.len);
        buf_str(&out, ", \"supportedVersions\": " SUPPORTED_VERSIONS "}");
        write_all(1, out.data, out.len);
        return 0;
    }
    const char *names[3];
    int count = required(command, names);
    if (count < 0) {
        if (!*command)
            return fail(INVALID_ENVIRONMENT, "CNI_COMMAND is not set",
                        "use one of ADD, DEL, CHECK, STATUS, GC, VERSION");
        buf_t msg = {0};
        buf_str(&msg, "unknown CNI_COMMAND ");
        python_repr(&msg, command);
        return fail(INVALID_ENVIRONMENT, msg.data, "use one of ADD, DEL, CHECK, STATUS, GC, VERSION");
    }
    buf_t missing = {0};
    for (int i = 0; i < count; i++) {
        if (!*env(names[i]))
            buf_printf(&missing, "%s%s", missing.len ? ", " : "", names[i]);
    }
    if (missing.len) {
        buf_t details = {0};
        buf_printf(&details, "the container runtime must set %s", missing.data);
        return failf(INVALID_ENVIRONMENT, details.data, "%s needs %s", command, missing.data);
    }
    if (config.len > MAX_CONFIG_BYTES) {
        buf_t details = {0};
        buf_printf(&details, "percale accepts up to %d bytes", MAX_CONFIG_BYTES);
        return failf(INVALID_CONFIG, details.data, "the network configuration on stdin is %zu bytes",
                     config.len);
    }
    if (kind != J_OBJECT) {
        const char *why = !utf8 ? "stdin is not UTF-8"
                        : kind == J_ERROR ? (config.len ? "not valid JSON" : "stdin is empty")
                        : "the network configuration is not a JSON object";
        buf_t details = {0};
        if (utf8 && kind == J_ERROR && config.len)
            buf_printf(&details, "%s: stopped at byte %zu", why, parser.pos);
        else
            buf_str(&details, why);
        return fail(DECODING_FAILURE, "the network configuration on stdin is not a JSON object",
                    details.data);
    }

    /* The socket: the config's agent_socket (null counts as absent), $PERCALE_CNI_SOCKET, the
     * default path. */
    buf_t path = {0};
    if (conf.socket_kind && conf.socket_kind != J_NULL) {
        if (conf.socket_kind == J_STRING)
            string_value(config.data, conf.socket_start, conf.socket_end, &path);
        if (!path.len) {
            buf_t details = {0};
            buf_str(&details, "got ");
            buf_put(&details, config.data + conf.socket_start, conf.socket_end - conf.socket_start);
            return fail(INVALID_CONFIG, "agent_socket must be the path of percale-node's socket",
                        details.data);
        }
    } else {
        buf_str(&path, *env("PERCALE_CNI_SOCKET") ? env("PERCALE_CNI_SOCKET") : DEFAULT_SOCKET);
    }

    buf_t request = {0};
    request_field(&request, "plugin", plugin, strlen(plugin), 1);
    request_field(&request, "command", command, strlen(command), 0);
    request_field(&request, "containerID", env("CNI_CONTAINERID"), strlen(env("CNI_CONTAINERID")), 0);
    request_field(&request, "netns", env("CNI_NETNS"), strlen(env("CNI_NETNS")), 0);
    request_field(&request, "ifname", env("CNI_IFNAME"), strlen(env("CNI_IFNAME")), 0);
    request_field(&request, "args", env("CNI_ARGS"), strlen(env("CNI_ARGS")), 0);
    request_field(&request, "path", env("CNI_PATH"), strlen(env("CNI_PATH")), 0);
    request_field(&request, "config", config.data, config.len, 0);
    buf_str(&request, "}\n");

    buf_t answer = {0};
    /* STATUS asks whether an ADD can be served now: with no agent to answer, it cannot (50, CNI
     * spec 1.1), and 11 is no answer STATUS defines. */
    int unreachable = strcmp(command, "STATUS") == 0 ? NOT_AVAILABLE : TRY_AGAIN_LATER;
    int status = ask_agent(&path, &request, &answer, unreachable);
    if (status)
        return status;
    return relay_answer(&path, &answer);
}
