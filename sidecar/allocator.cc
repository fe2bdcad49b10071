#include "sidecar/allocator.h"

#if BULWARK_WITH_TCMALLOC
#include <gperftools/malloc_extension_c.h>
#endif

namespace bulwark {
namespace {

#if BULWARK_WITH_TCMALLOC
// All threads' caches together (tcmalloc's default is 32 MiB): a sidecar's
// workers need little to reach the fast path, and every pod pays the rest.
constexpr size_t kMaxTotalThreadCacheBytes = 4 * 1024 * 1024;
#endif

}  // namespace

void ConfigureAllocator() {
#if BULWARK_WITH_TCMALLOC
  MallocExtension_SetNumericProperty("tcmalloc.max_total_thread_cache_bytes",
                                     kMaxTotalThreadCacheBytes);
#endif
}

void ReleaseFreeMemory() {
#if BULWARK_WITH_TCMALLOC
  MallocExtension_ReleaseFreeMemory();
#endif
}

std::string AllocatorName() {
#if BULWARK_WITH_TCMALLOC
  return "tcmalloc";
#else
  return "glibc";
#endif
}

}  // namespace bulwark
