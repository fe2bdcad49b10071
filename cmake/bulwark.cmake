# Small helpers in the spirit of Abseil's absl_cc_library: every folder declares its
# targets with these, so warnings, sanitizers and include paths are set in one place.

# While a component is being written its files may not exist yet: with
# -DBULWARK_ALLOW_MISSING=ON such targets (and those depending on them) are skipped with a
# message instead of failing the configure. CI never sets it.
option(BULWARK_ALLOW_MISSING "Skip targets whose sources or deps are missing" OFF)
macro(bulwark_skip_if_missing name)
  if(BULWARK_ALLOW_MISSING)
    foreach(f ${ARGN})
      if(f MATCHES "^bulwark_")
        if(NOT TARGET ${f})
          message(STATUS "skipping ${name}: target ${f} missing")
          return()
        endif()
      elseif(f MATCHES "\\.(cc|h)$" AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
        message(STATUS "skipping ${name}: ${f} missing")
        return()
      endif()
    endforeach()
  endif()
endmacro()

# -DBULWARK_SKIP_GRPC_TARGETS=ON builds only the targets that do not link gRPC: the sidecar
# (which never does), the unit tests, the fuzz replays, the microbenchmarks and the gRPC-free
# integration tests. The ThreadSanitizer build (scripts/test.sh) needs it: it links an Abseil
# rebuilt with -fsanitize=thread (scripts/build-absl-tsan.sh), while Debian's gRPC is built
# against Debian's uninstrumented libabsl, and one process cannot hold both. A target whose
# DEPS name gRPC::* or a target already skipped for that reason is skipped (with a
# message), and counts as gRPC for the targets declared after it.
option(BULWARK_SKIP_GRPC_TARGETS "Build only the targets that do not link gRPC" OFF)
# bulwark_mark_grpc_target(name): `name` links gRPC (or was skipped for it).
function(bulwark_mark_grpc_target name)
  set_property(GLOBAL APPEND PROPERTY BULWARK_GRPC_TARGETS ${name})
endfunction()
# Returns from the calling function (a macro) if BULWARK_SKIP_GRPC_TARGETS is on and a dep
# links gRPC.
macro(bulwark_skip_if_grpc name)
  if(BULWARK_SKIP_GRPC_TARGETS)
    get_property(_bulwark_grpc_targets GLOBAL PROPERTY BULWARK_GRPC_TARGETS)
    foreach(f ${ARGN})
      if(f MATCHES "^gRPC::" OR f IN_LIST _bulwark_grpc_targets)
        message(STATUS "skipping ${name}: links gRPC (BULWARK_SKIP_GRPC_TARGETS)")
        bulwark_mark_grpc_target(${name})
        return()
      endif()
    endforeach()
  endif()
endmacro()

# bulwark_cc_library(NAME n SRCS a.cc HDRS a.h DEPS x y)
function(bulwark_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  bulwark_skip_if_missing(${ARG_NAME} ${ARG_SRCS} ${ARG_HDRS} ${ARG_DEPS})
  bulwark_skip_if_grpc(${ARG_NAME} ${ARG_DEPS})
  if(ARG_SRCS)
    add_library(${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
    target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
    bulwark_apply_warnings(${ARG_NAME})
  else()
    add_library(${ARG_NAME} INTERFACE)
    target_link_libraries(${ARG_NAME} INTERFACE ${ARG_DEPS})
    target_include_directories(${ARG_NAME} INTERFACE ${PROJECT_SOURCE_DIR})
  endif()
endfunction()

# bulwark_cc_binary(NAME n SRCS main.cc DEPS x y)
function(bulwark_cc_binary)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  bulwark_skip_if_missing(${ARG_NAME} ${ARG_SRCS} ${ARG_DEPS})
  bulwark_skip_if_grpc(${ARG_NAME} ${ARG_DEPS})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  bulwark_apply_warnings(${ARG_NAME})
endfunction()

# bulwark_cc_test(NAME n SRCS t.cc DEPS x y [LABELS l]): a GoogleTest binary run by ctest.
# Tests without LABELS are labelled unit, and `ninja bulwark_unit_tests` builds them all (what
# `ctest -L unit` runs).
add_custom_target(bulwark_unit_tests)
function(bulwark_cc_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  bulwark_skip_if_missing(${ARG_NAME} ${ARG_SRCS} ${ARG_DEPS})
  bulwark_skip_if_grpc(${ARG_NAME} ${ARG_DEPS})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gmock GTest::gtest_main)
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  bulwark_apply_warnings(${ARG_NAME})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(ARG_LABELS STREQUAL "unit")
    add_dependencies(bulwark_unit_tests ${ARG_NAME})
  endif()
  gtest_discover_tests(${ARG_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${ARG_LABELS}"
               ENVIRONMENT "BULWARK_BINARY_DIR=${PROJECT_BINARY_DIR}"
               TIMEOUT "${ARG_TIMEOUT}")
endfunction()

function(bulwark_apply_warnings target)
  # Designated initializers (option structs, TotW #173) leave fields at their defaults on
  # purpose; gcc 12 would warn about every such field.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-missing-field-initializers)
  if(BULWARK_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(BULWARK_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # gcc's flow analysis reports false "may be used uninitialized" inside libstdc++
    # (std::function in std::regex) once sanitizer instrumentation is on.
    target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized)
  endif()
  if(BULWARK_THREAD_SAFETY)
    target_compile_options(${target} PRIVATE -Wthread-safety -Werror=thread-safety)
  endif()
endfunction()
