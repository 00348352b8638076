#ifndef SHEAF_CCURLSHIM_H
#define SHEAF_CCURLSHIM_H

#include <curl/curl.h>

/* Swift cannot call C variadic functions, so each curl_*_setopt / getinfo shape gets a
   typed, non-variadic wrapper here; and the socket-counting callbacks behind the
   sheaf_upstream_connections gauge. */

typedef size_t (*sheaf_curl_data_callback)(char *ptr, size_t size, size_t nmemb, void *userdata);

CURLcode sheaf_easy_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode sheaf_easy_setopt_ptr(CURL *handle, CURLoption option, void *value);
CURLcode sheaf_easy_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode sheaf_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
/* A blob option (CURLOPT_CAINFO_BLOB, ...); curl keeps its own copy of the bytes. */
CURLcode sheaf_easy_setopt_blob(CURL *handle, CURLoption option, const void *data, size_t length);
CURLcode sheaf_easy_setopt_data_callback(CURL *handle, CURLoption option, sheaf_curl_data_callback value);
CURLcode sheaf_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode sheaf_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value);
CURLcode sheaf_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value);
CURLMcode sheaf_multi_setopt_long(CURLM *handle, CURLMoption option, long value);

/* The sockets of one transport's connections, as curl opens and closes them (its callbacks run
   on the curl thread; `count` is also read elsewhere, atomically, for the connections gauge). */
typedef struct sheaf_sockets {
    long count;
    int used, capacity;
    curl_socket_t *fds;
    int *ports;     /* local port of each, 0 until looked up */
    long *requests; /* requests started on each connection */
    long stale;     /* requests kept off a reused connection that held unsolicited bytes */
} sheaf_sockets;

/* What one easy handle's current transfer did, and may do, as its pre-request callback sees it.
   libcurl sends a request again by itself when a reused connection dies before any byte of
   answer (up to five times, whatever the method): each send passes the callback, which counts
   it and refuses the ones past `max_sends` (CURLE_ABORTED_BY_CALLBACK, `refused_send` set).
   One per handle, kept with it; `sends`, `max_sends` and `refused_send` are set before each
   transfer. */
typedef struct sheaf_transfer {
    sheaf_sockets *sockets;
    int sends;        /* requests this transfer put on the wire */
    int max_sends;    /* 1 for a request that must not go twice (not idempotent) */
    int refused_send; /* a send past max_sends was refused */
    char error[CURL_ERROR_SIZE + 1]; /* CURLOPT_ERRORBUFFER */
} sheaf_transfer;

sheaf_sockets *sheaf_sockets_create(void);
void sheaf_sockets_destroy(sheaf_sockets *sockets);
long sheaf_sockets_count(const sheaf_sockets *sockets);
/* Registers the handle's sockets in `transfer->sockets`, and checks each request before it goes
   out: past `max_sends` it is refused; on a reused connection, bytes already waiting there
   answer nothing this request asked (a late answer, a 408 before a close), so the transfer is
   aborted (CURLE_ABORTED_BY_CALLBACK) before anything is sent, and curl closes that connection. */
CURLcode sheaf_easy_watch_sockets(CURL *handle, sheaf_transfer *transfer);
/* CURLMsg.data is a union; Swift reads the result code through this. */
CURLcode sheaf_msg_result(const CURLMsg *message);
/* The running libcurl's version as 0xXXYYZZ (CURLVERSION_NOW is a macro Swift cannot see). */
unsigned int sheaf_curl_version_num(void);

#endif
