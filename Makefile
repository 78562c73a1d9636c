# Thin wrapper: set-up is `make demo` and `make test` on a fresh Debian 12
# machine (as root). Each installs missing Debian packages, configures and
# builds into build/. The real build is CMake.
BUILD      ?= build
ASAN_BUILD ?= $(BUILD)/asan
FUZZ_BUILD ?= $(BUILD)/fuzz
# make fuzz: seconds per harness, and which harnesses (docs/fuzzing.md).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= catalog profile event customers stored policy request
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

.PHONY: all build test test-asan test-stress test-luajit2 test-luajit-upstream \
	test-fuzz fuzz fuzz-build demo demo-stop bench install clean format

# Configure and build $(BUILD): the first steps of build, test, demo, bench.
define build_tree
	cmake -S . -B $(BUILD) $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS)
endef

all: build

build:
	@scripts/deps.sh build
	$(build_tree)

# Every suite, then the C suites again under AddressSanitizer + UBSan, then
# each fuzz harness for about 10 s from its seed corpus.
test:
	@scripts/deps.sh test
	$(build_tree)
	ctest --test-dir $(BUILD) --output-on-failure
	$(MAKE) --no-print-directory test-asan
	$(MAKE) --no-print-directory test-fuzz

test-asan:
	@scripts/deps.sh test
	cmake -S . -B $(ASAN_BUILD) -DNBX_SANITIZE=ON -DNBX_BUILD_BENCH=OFF \
	    -DNBX_BUILD_NGINX=OFF -DCMAKE_BUILD_TYPE=Debug $(CMAKE_ARGS)
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    ctest --test-dir $(ASAN_BUILD) -L '^c$$' --output-on-failure

# Every suite while a busy loop runs on every core, as on a slow, busy CI
# machine: tests assert promises, not speed (scripts/stress.sh).
test-stress:
	@scripts/deps.sh test
	$(build_tree)
	scripts/stress.sh $(BUILD)

# The whole suite against either LuaJIT package, whichever this machine has
# installed: the .debs are extracted under $(BUILD)/ and nothing is
# installed or removed (docs/dependencies.md).
test-luajit2:
	@scripts/deps.sh test
	CMAKE_ARGS="$(CMAKE_ARGS)" JOBS=$(JOBS) \
	    scripts/test-luajit.sh libluajit2-5.1-dev $(BUILD)/luajit2

test-luajit-upstream:
	@scripts/deps.sh test
	CMAKE_ARGS="$(CMAKE_ARGS)" JOBS=$(JOBS) \
	    scripts/test-luajit.sh libluajit-5.1-dev $(BUILD)/luajit-upstream

# The libFuzzer harnesses of tests/fuzz, built with clang in a tree of their
# own so that $(BUILD) stays a gcc build.
fuzz-build:
	@scripts/deps.sh fuzz
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DNBX_FUZZ=ON \
	    -DNBX_BUILD_TESTS=OFF -DNBX_BUILD_BENCH=OFF -DNBX_BUILD_NGINX=OFF \
	    -DCMAKE_BUILD_TYPE=Debug $(CMAKE_ARGS)
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target nbx_fuzzers

# Seed corpora (regression inputs included) plus ~10 s of new inputs each.
test-fuzz: fuzz-build
	ctest --test-dir $(FUZZ_BUILD) -L '^fuzz$$' --output-on-failure

# FUZZ_SECONDS per harness in FUZZ_TARGETS, one at a time; every harness
# runs even after one fails, and the failures are listed at the end.
fuzz: fuzz-build
	@failed=""; for t in $(FUZZ_TARGETS); do \
	    echo "== fuzz_$$t: $(FUZZ_SECONDS) s"; \
	    tests/fuzz/run.sh $(FUZZ_BUILD) $$t $(FUZZ_SECONDS) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then \
	    echo "fuzz: findings in:$$failed (inputs in $(FUZZ_BUILD)/artifacts/)"; exit 1; \
	fi

demo:
	@scripts/deps.sh demo
	$(build_tree)
	scripts/demo.sh $(BUILD)

demo-stop:
	scripts/demo.sh $(BUILD) stop

bench:
	@scripts/deps.sh bench
	$(build_tree)
	scripts/bench.sh $(BUILD)

install: build
	cmake --install $(BUILD)

format:
	clang-format -i include/*.h core/*.c core/*.h bindings/cli/*.c tests/*.c bench/*.c

clean:
	rm -rf $(BUILD)
