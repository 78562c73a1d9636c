"""The same request gives the same decision, bit for bit, in another process:
nothing a policy can see depends on the process (string hash seeds, the
order of pairs, addresses in tostring)."""
import json
import unittest

from cliutil import CATALOG, CliTestCase

# A score built from everything that used to differ between processes: the
# order pairs walks string keys in (LuaJIT seeds string hashes per state),
# tostring of tables and functions (addresses), next().
ORDER_POLICY = """
local keys = {}
for i = 1, 64 do keys["k" .. i] = i end
local P = { name = "order" }
function P.score(offer, customer, session)
  local h, i = 0, 0
  for k, v in pairs(keys) do i = i + 1; h = (h * 31 + i * v + #k) % 1000003 end
  for k in pairs(offer) do i = i + 1; h = (h * 31 + i * #k) % 1000003 end
  for k, v in pairs(customer.attrs) do i = i + 1; h = (h * 31 + i * #k) % 1000003 end
  local t = {}; t.x = 1; t.b = 2; t.q = 3
  for k in pairs(t) do i = i + 1; h = (h * 31 + i * k:byte()) % 1000003 end
  -- every byte, not only the length: an address's digits differ
  local shown = tostring({}) .. tostring(P.score) .. tostring(next(keys))
    .. string.format("%s", {})
  for j = 1, #shown do h = (h * 31 + shown:byte(j)) % 1000003 end
  return h + offer.margin, offer.margin
end
return P
"""


class Replay(CliTestCase):

    def test_two_processes_give_the_same_decision(self):
        self.write_jsonl("p.jsonl", [{"id": "alice",
                                      "attrs": {"country": "DE", "tier": "gold", "age": 40,
                                                "city": "Berlin", "lang": "de"},
                                      "consent": {"personalization": True}}])
        self.ok("import", "profiles", self.path("p.jsonl"), "--store", self.store)
        policy = self.write("order.lua", ORDER_POLICY)
        runs = []
        for _ in range(3):
            r = self.ok("decide", "--store", self.store, "--catalog", CATALOG, "--policy", policy,
                        "--customer", "alice", "--as-of", "2026-03-10T12:00:00Z", "--explain",
                        # determinism is the subject: room so no run times out
                        "--time-limit-us", "200000")
            d = json.loads(r.stdout)
            self.assertIs(d["fallback"], False, d)
            del d["decision_id"]
            runs.append(d)
        self.assertEqual(runs[0], runs[1])
        self.assertEqual(runs[0], runs[2])


if __name__ == "__main__":
    unittest.main()
