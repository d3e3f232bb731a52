// Echoes its event with what the runtime told it: the healthy function of the tests.
#include <unistd.h>

#include <string>

#include "gatehouse_lambda.h"

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation& inv) {
    return gatehouse::lambda::Result::success(
        "{\"echo\":" + (inv.payload.empty() ? std::string("null") : inv.payload) +
        ",\"request_id\":\"" + inv.request_id + "\",\"lineage_depth\":\"" + inv.lineage_depth +
        "\",\"source\":\"" + inv.source + "\",\"source_detail\":\"" + inv.source_detail +
        "\",\"caller_request_id\":\"" + inv.caller_request_id + "\",\"principal\":\"" +
        inv.principal + "\",\"uid\":" + std::to_string(::getuid()) +
        ",\"pid\":" + std::to_string(::getpid()) + "}");
  });
}
