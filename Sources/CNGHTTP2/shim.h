#include <nghttp2/nghttp2.h>
#include "pool.h"
