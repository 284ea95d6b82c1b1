//! `ringws-engine`: the io_uring runtime of ringws. Being implemented.
