# The kernel-family registry on the build side. cpp/include/codl/kernel_families.def lists the
# families; codl_add_kernel_family(name) collects, for one family, the files that exist by the
# naming convention:
#   cpp/kernels/generic/<name>_ref.cpp           the reference (required)
#   cpp/kernels/x86/avx2/<name>_avx2.cpp         ISA variants, each compiled with its ISA's flags
#   cpp/kernels/x86/avx512/<name>_avx512.cpp     (only for the ISAs this build enables,
#   cpp/kernels/arm/sve/<name>_sve.cpp            codl_enable_isa)
#   cpp/core/<name>.cpp                          the public entry points (optional)
#   src/bindings/<name>.cpp                      the Python binding (optional)
#   tests/cpp/test_<name>.cpp                    the C++ test (optional)
# and defines CODL_VARIANT_<isa>_<name> to 1 or 0 for every enabled ISA, which the dispatch
# tables read to fall back to the reference where an ISA has no variant.
#
# Every kernel file gets CODL_ISA_NAMESPACE (ref, avx2, avx512 or sve), the namespace that the
# shared kernel bodies (cpp/kernels/*.h) open, so a body is always compiled into the namespace
# of the flags it is compiled with.

set(CODL_KERNEL_SOURCES "")
set(CODL_KERNEL_DEFINITIONS "")
set(CODL_BINDING_SOURCES "")
set(CODL_TEST_SOURCES "")
set(CODL_ENABLED_ISAS "")

# codl_enable_isa(isa dir flags...): build <family>_<isa>.cpp files found under cpp/kernels/<dir>.
macro(codl_enable_isa isa dir)
  list(APPEND CODL_ENABLED_ISAS ${isa})
  set(CODL_ISA_DIR_${isa} ${dir})
  set(CODL_ISA_FLAGS_${isa} ${ARGN})
  string(TOUPPER ${isa} _codl_isa_upper)
  list(APPEND CODL_KERNEL_DEFINITIONS CODL_HAVE_${_codl_isa_upper}=1)
endmacro()

function(codl_add_kernel_family name)
  set(root ${PROJECT_SOURCE_DIR})
  set(sources ${CODL_KERNEL_SOURCES})
  set(definitions ${CODL_KERNEL_DEFINITIONS})
  set(reference cpp/kernels/generic/${name}_ref.cpp)
  if(NOT EXISTS ${root}/${reference})
    message(FATAL_ERROR "kernel family ${name}: ${reference} is missing (every family has a reference)")
  endif()
  set_source_files_properties(${reference} PROPERTIES COMPILE_DEFINITIONS CODL_ISA_NAMESPACE=ref)
  list(APPEND sources ${reference})
  if(EXISTS ${root}/cpp/core/${name}.cpp)
    list(APPEND sources cpp/core/${name}.cpp)
  endif()
  set(variants "")
  foreach(isa IN LISTS CODL_ENABLED_ISAS)
    set(file cpp/kernels/${CODL_ISA_DIR_${isa}}/${name}_${isa}.cpp)
    if(EXISTS ${root}/${file})
      set_source_files_properties(${file} PROPERTIES COMPILE_OPTIONS "${CODL_ISA_FLAGS_${isa}}"
                                                     COMPILE_DEFINITIONS CODL_ISA_NAMESPACE=${isa})
      list(APPEND sources ${file})
      list(APPEND definitions CODL_VARIANT_${isa}_${name}=1)
      list(APPEND variants ${isa})
    else()
      list(APPEND definitions CODL_VARIANT_${isa}_${name}=0)
    endif()
  endforeach()
  set(CODL_KERNEL_SOURCES ${sources} PARENT_SCOPE)
  set(CODL_KERNEL_DEFINITIONS ${definitions} PARENT_SCOPE)
  if(EXISTS ${root}/src/bindings/${name}.cpp)
    set(CODL_BINDING_SOURCES ${CODL_BINDING_SOURCES} src/bindings/${name}.cpp PARENT_SCOPE)
  endif()
  if(EXISTS ${root}/tests/cpp/test_${name}.cpp)
    set(CODL_TEST_SOURCES ${CODL_TEST_SOURCES} tests/cpp/test_${name}.cpp PARENT_SCOPE)
  endif()
  if(variants)
    string(REPLACE ";" ", " variants "${variants}")
  else()
    set(variants "none")
  endif()
  message(STATUS "codl: kernel family ${name}: reference + ${variants}")
endfunction()

# Every family of the registry, in its order.
function(codl_kernel_family_names out)
  file(STRINGS ${PROJECT_SOURCE_DIR}/cpp/include/codl/kernel_families.def lines
       REGEX "^CODL_KERNEL_FAMILY\\(")
  set(names "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^CODL_KERNEL_FAMILY\\(([A-Za-z0-9_]+),.*" "\\1" name "${line}")
    list(APPEND names ${name})
  endforeach()
  set(${out} ${names} PARENT_SCOPE)
endfunction()
