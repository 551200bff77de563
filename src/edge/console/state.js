// The console's shared mutable state, in one place: the stream session the view shows (null when
// none is open). Modules read and replace `view.session` here; none keeps a copy of its own.

export const view = { session: null };
