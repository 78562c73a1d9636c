-- expect: fallback runtime: too many results to unpack
-- A range whose length overflows a signed 64-bit count must be refused,
-- not wrap around (undefined behaviour in C: the sanitizer build aborts).
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_unpack_wide_range" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return unpack({}, -2 ^ 62, 2 ^ 62)
  end
  return offer.margin
end

return policy
