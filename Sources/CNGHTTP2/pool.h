/* A per-session allocator for libnghttp2 (nghttp2_mem). A session allocates about eleven blocks
   per stream (the stream, its outbound item, the header copy, each received header's buffer) and
   frees them when the stream closes. With a thousand streams open at once, glibc's per-thread
   cache (seven blocks per size) overflows and almost every call took malloc's slow path (issue 13).
   Here blocks are kept on free lists by power-of-two size class, up to a byte budget, and reused.
   One pool belongs to one session, which is used on one event loop: no locking. Destroy the pool
   after nghttp2_session_del (which returns every block the session held).
   SwiftPM does not notice an edit to this header: touch a Swift file of Upstream (and of
   UpstreamTests) so that they are compiled again with it. */
#ifndef SHEAF_NGHTTP2_POOL_H
#define SHEAF_NGHTTP2_POOL_H

#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SHEAF_POOL_CLASSES 8 /* 32, 64, ..., 4096 bytes */
#define SHEAF_POOL_LARGE 0xFFFFFFFFu
#define SHEAF_POOL_HEADER 16 /* keeps malloc's 16-byte alignment */

typedef struct sheaf_pool_block {
    struct sheaf_pool_block *next;
} sheaf_pool_block;

typedef struct sheaf_nghttp2_pool {
    nghttp2_mem mem;
    sheaf_pool_block *free_lists[SHEAF_POOL_CLASSES];
    size_t cached_bytes;
    size_t budget;
} sheaf_nghttp2_pool;

/* The smallest class that holds size: from the bit length of size - 1 (a loop over the classes
   cost up to eight compares, eleven times an item). */
static inline uint32_t sheaf_pool_class(size_t size) {
    if (size <= 32) return 0;
    if (size > ((size_t)32 << (SHEAF_POOL_CLASSES - 1))) return SHEAF_POOL_LARGE;
    return (uint32_t)(64 - __builtin_clzll((unsigned long long)(size - 1))) - 5;
}

static inline size_t sheaf_pool_capacity(uint32_t c) { return (size_t)32 << c; }
/* What a free block of class c holds, header included: what the budget counts. */
static inline size_t sheaf_pool_held(uint32_t c) { return sheaf_pool_capacity(c) + SHEAF_POOL_HEADER; }

/* The class a block was handed out with, from its header. */
static inline uint32_t sheaf_pool_block_class(void *ptr) {
    uint32_t c;
    memcpy(&c, (unsigned char *)ptr - SHEAF_POOL_HEADER, sizeof c);
    return c;
}

static inline void *sheaf_pool_malloc(size_t size, void *user) {
    sheaf_nghttp2_pool *pool = (sheaf_nghttp2_pool *)user;
    uint32_t c = sheaf_pool_class(size);
    unsigned char *raw;
    if (c != SHEAF_POOL_LARGE && pool->free_lists[c]) {
        sheaf_pool_block *block = pool->free_lists[c];
        pool->free_lists[c] = block->next;
        pool->cached_bytes -= sheaf_pool_held(c);
        raw = (unsigned char *)block - SHEAF_POOL_HEADER;
    } else {
        if (size > SIZE_MAX - SHEAF_POOL_HEADER) return NULL;
        raw = (unsigned char *)malloc(SHEAF_POOL_HEADER + (c == SHEAF_POOL_LARGE ? size : sheaf_pool_capacity(c)));
        if (!raw) return NULL;
        memcpy(raw, &c, sizeof c);
        if (c == SHEAF_POOL_LARGE) memcpy(raw + sizeof c, &(uint64_t){size}, sizeof(uint64_t));
    }
    return raw + SHEAF_POOL_HEADER;
}

static inline void sheaf_pool_free(void *ptr, void *user) {
    if (!ptr) return;
    sheaf_nghttp2_pool *pool = (sheaf_nghttp2_pool *)user;
    unsigned char *raw = (unsigned char *)ptr - SHEAF_POOL_HEADER;
    uint32_t c = sheaf_pool_block_class(ptr);
    if (c == SHEAF_POOL_LARGE || pool->cached_bytes + sheaf_pool_held(c) > pool->budget) {
        free(raw);
        return;
    }
    sheaf_pool_block *block = (sheaf_pool_block *)ptr;
    block->next = pool->free_lists[c];
    pool->free_lists[c] = block;
    pool->cached_bytes += sheaf_pool_held(c);
}

/* The usable size of a block the pool handed out. */
static inline size_t sheaf_pool_usable(void *ptr) {
    uint32_t c = sheaf_pool_block_class(ptr);
    if (c != SHEAF_POOL_LARGE) return sheaf_pool_capacity(c);
    uint64_t size;
    memcpy(&size, (unsigned char *)ptr - SHEAF_POOL_HEADER + sizeof c, sizeof size);
    return (size_t)size;
}

static inline void *sheaf_pool_calloc(size_t count, size_t size, void *user) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *ptr = sheaf_pool_malloc(count * size, user);
    if (ptr) memset(ptr, 0, count * size);
    return ptr;
}

static inline void *sheaf_pool_realloc(void *ptr, size_t size, void *user) {
    if (!ptr) return sheaf_pool_malloc(size, user);
    if (size == 0) {
        sheaf_pool_free(ptr, user);
        return NULL;
    }
    size_t usable = sheaf_pool_usable(ptr);
    /* Kept in place when it fits and stays on its side of the class limit: a large block shrunk
       to a class size moves into a class block instead of pinning its large allocation. */
    int was_large = sheaf_pool_block_class(ptr) == SHEAF_POOL_LARGE;
    int is_large = sheaf_pool_class(size) == SHEAF_POOL_LARGE;
    if (size <= usable && was_large == is_large) return ptr;
    void *moved = sheaf_pool_malloc(size, user);
    if (!moved) return NULL;
    memcpy(moved, ptr, usable < size ? usable : size);
    sheaf_pool_free(ptr, user);
    return moved;
}

/* A pool that keeps at most `budget` bytes of free blocks (headers included). */
static inline sheaf_nghttp2_pool *sheaf_nghttp2_pool_create(size_t budget) {
    sheaf_nghttp2_pool *pool = (sheaf_nghttp2_pool *)calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->budget = budget;
    pool->mem.mem_user_data = pool;
    pool->mem.malloc = sheaf_pool_malloc;
    pool->mem.free = sheaf_pool_free;
    pool->mem.calloc = sheaf_pool_calloc;
    pool->mem.realloc = sheaf_pool_realloc;
    return pool;
}

/* Bytes the pool holds in free blocks, their headers included. */
static inline size_t sheaf_nghttp2_pool_cached(const sheaf_nghttp2_pool *pool) { return pool->cached_bytes; }

/* Frees free blocks, largest first, until at most `keep` bytes stay cached. */
static inline void sheaf_nghttp2_pool_trim(sheaf_nghttp2_pool *pool, size_t keep) {
    for (int c = SHEAF_POOL_CLASSES - 1; c >= 0 && pool->cached_bytes > keep; c--) {
        while (pool->free_lists[c] && pool->cached_bytes > keep) {
            sheaf_pool_block *block = pool->free_lists[c];
            pool->free_lists[c] = block->next;
            pool->cached_bytes -= sheaf_pool_held((uint32_t)c);
            free((unsigned char *)block - SHEAF_POOL_HEADER);
        }
    }
}

static inline void sheaf_nghttp2_pool_destroy(sheaf_nghttp2_pool *pool) {
    if (!pool) return;
    for (int c = 0; c < SHEAF_POOL_CLASSES; c++) {
        sheaf_pool_block *block = pool->free_lists[c];
        while (block) {
            sheaf_pool_block *next = block->next;
            free((unsigned char *)block - SHEAF_POOL_HEADER);
            block = next;
        }
    }
    free(pool);
}

#endif
