-- expect: load_error: needs a 'name' string
-- The table has no name.
return { score = function(offer) return offer.margin end }
