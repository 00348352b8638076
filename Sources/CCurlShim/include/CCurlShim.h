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
CURLcode sheaf_easy_setopt_data_callback(CURL *handle, CURLoption option, sheaf_curl_data_callback value);
CURLcode sheaf_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode sheaf_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value);
CURLMcode sheaf_multi_setopt_long(CURLM *handle, CURLMoption option, long value);

/* Counts the sockets of the transfer's connections in *counter (atomically). */
CURLcode sheaf_easy_count_sockets(CURL *handle, long *counter);
long sheaf_counter_load(const long *counter);
/* CURLMsg.data is a union; Swift reads the result code through this. */
CURLcode sheaf_msg_result(const CURLMsg *message);

#endif
