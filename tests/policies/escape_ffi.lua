-- expect: fallback runtime: attempt to index global 'ffi'
-- Reaches for ffi, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_ffi" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    ffi.cdef('int getpid(void);')
  end
  return offer.margin
end

return policy
