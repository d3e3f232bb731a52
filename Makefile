# The two commands: `make run` and `make test`. Both install what is missing first.
BUILD      ?= build
TEST_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
CONFIG     ?= gatehouse.example.yaml
FUZZ_SECONDS ?= 20
CMAKE_FLAGS ?=

.PHONY: all setup build run test unit fuzz-smoke bench clean format

all: build

setup:
	@bash scripts/setup

build: setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGH_TESTS=OFF $(CMAKE_FLAGS)
	cmake --build $(BUILD)

run: build
	./$(BUILD)/src/cli/gatehouse serve --config $(CONFIG)

# Every test, under AddressSanitizer and UndefinedBehaviorSanitizer, warnings as errors; then the
# libFuzzer targets built with clang and run briefly.
test: setup
	cmake -S . -B $(TEST_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGH_SANITIZE=ON -DGH_WERROR=ON -DGH_BENCH=OFF $(CMAKE_FLAGS)
	cmake --build $(TEST_BUILD)
	cd $(TEST_BUILD) && ctest --output-on-failure -j2
	$(MAKE) fuzz-smoke

fuzz-smoke: setup
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGH_FUZZ=ON $(CMAKE_FLAGS)
	cmake --build $(FUZZ_BUILD)
	bash scripts/fuzz-smoke $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: build
	cmake -S . -B $(BUILD) -DGH_BENCH=ON
	cmake --build $(BUILD)
	bash bench/gateway.sh

format:
	git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(FUZZ_BUILD)
