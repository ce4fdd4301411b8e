//! The delivery side of the queue: the scheduler ([`runner`]) that hands due messages to an
//! [`attempt`], the pure retry schedule ([`retry`]) and outcome decision ([`decide`]), and one
//! config generation's transports ([`delivery`]).

pub mod attempt;
pub mod control;
pub mod decide;
pub mod delivery;
pub mod handoff;
pub mod retry;
pub mod runner;
pub mod shaping;
pub mod trail;
