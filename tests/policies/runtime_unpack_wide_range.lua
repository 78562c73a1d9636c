-- expect: fallback runtime: too many results to unpack
-- A range whose length overflows a signed 64-bit count must be refused,
-- not wrap around (undefined behaviour in C: the sanitizer build aborts).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_unpack_wide_range" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return unpack({}, -2 ^ 62, 2 ^ 62)
  end
  return offer.margin
end

return policy
