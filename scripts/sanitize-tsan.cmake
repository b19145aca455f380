# Included into the TSan build of scripts/sanitize.sh (CMAKE_PROJECT_INCLUDE), nowhere else.
#
# kernels/cpu/attention.cpp compiles its two hot loops three times (GCC target_clones, Note
# [attention isa]); the loader picks one through IFUNC resolvers that run while libheadroom.so
# is relocated, before the TSan runtime has started. Instrumented for TSan, a resolver crashes
# the program at load (SIGSEGV in _dl_relocate_object). That file is not what the TSan part
# tests (it runs the caching allocator's tests), so it is built without TSan.
set_source_files_properties(${CMAKE_SOURCE_DIR}/kernels/cpu/attention.cpp PROPERTIES COMPILE_OPTIONS -fno-sanitize=thread)
