// The sidecar binary's memory allocator. Built with BULWARK_TCMALLOC (the
// default), the binary links gperftools' tcmalloc_minimal, whose per-thread
// caches make malloc/free several times cheaper than glibc's on the data path
// (README, "Where the CPU goes"); these functions keep what it holds of freed
// memory bounded. Without it they do nothing.
//
// Thread-safety: both are thread-safe; call them from the main thread.
#ifndef BULWARK_SIDECAR_ALLOCATOR_H_
#define BULWARK_SIDECAR_ALLOCATOR_H_

#include <string>

namespace bulwark {

// Once, at start-up: bounds the memory all threads' caches may hold together.
void ConfigureAllocator();

// About once a second: returns the pages freed since to the operating system,
// so a burst (a client that never reads, buffered up to its windows) does not
// stay resident in every pod.
void ReleaseFreeMemory();

// "tcmalloc" or "glibc", for the start-up log.
std::string AllocatorName();

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_ALLOCATOR_H_
