//! A conference room's mixer, sans-IO: N−1 mixing of G.711 participants
//! at 20 ms frames, the room's full mix for its recording, and talk
//! detection per participant.
//!
//! # What it owns
//! [`Mixer`] holds the room's participants ([`Mixer::add`] with each one's
//! [`Law`], [`Mixer::remove`], [`Mixer::set_heard`] for mute). Each tick
//! the caller hands it at most one frame per participant
//! ([`Mixer::push_frame`] of decoded samples, or [`Mixer::push_payload`]
//! of G.711 codes), optionally a frame only one participant hears
//! ([`Mixer::push_private`], a prompt) and a frame everyone hears
//! ([`Mixer::push_room`], a join tone), then calls [`Mixer::tick`]; after
//! it, [`Mixer::output`] is the G.711 payload each participant is sent,
//! [`Mixer::mix`] the room's full mix (its recording), and
//! [`Mixer::poll_talk`] the [`Talk`] transitions.
//!
//! - **N−1, one sum per tick.** The heard frames are summed once in
//!   `i32` (no overflow: 2¹⁶ participants at full scale still fit); each
//!   participant that contributed is sent the sum minus its own frame, so
//!   it never hears itself, at O(N) per tick rather than O(N²). Those that
//!   contributed nothing (silent, muted, or no packet this tick) all hear
//!   the full mix: it is encoded once per law and shared.
//! - **Saturation, not a limiter.** Each output is clamped to `i16`: no
//!   wrap-around (a sum of 40 000 wrapping to −25 536 is a loud click).
//!   A soft limiter was not chosen: it must run per output (each
//!   participant's N−1 sum differs), with gain state and look-ahead per
//!   participant, which costs more than the mixing itself; it changes the
//!   level of everything whenever one voice is loud; and conference
//!   speech rarely clips (two voices at a normal −20 dBFS sum to −14
//!   dBFS). Saturation touches only the samples that overflow, and keeps
//!   the output exact otherwise, which the tests rely on.
//! - **A missing frame never stalls the room.** A participant without a
//!   frame this tick (a lost packet, silence suppression, a jitter buffer
//!   not started yet) contributes nothing; the tick runs on what it has.
//! - **Talk detection** on every frame a participant sends, muted or not
//!   (so an app can tell a muted participant that they are talking): a
//!   frame is loud when its mean square is at least [`TALK_THRESHOLD_RMS`]
//!   squared; [`TALK_START_FRAMES`] loud frames in a row start talking,
//!   [`TALK_STOP_FRAMES`] quiet ones (or missing frames) in a row stop
//!   it. The hangover keeps pauses between words from flapping, and rate
//!   limits the events: a participant makes at most one start and one
//!   stop per `TALK_START_FRAMES + TALK_STOP_FRAMES` frames.
//!
//! # What it must not do
//! No clock, no IO, no codec negotiation: the caller ticks it every 20 ms
//! and moves the payloads. After warm-up (the first tick with a given
//! number of participants), a tick allocates nothing: frames, sums and
//! payloads live in buffers made when participants are added, and the
//! talk events' queue is reserved for one event per participant. Bad
//! input (an unknown participant, a frame of the wrong length) is a
//! `false` or a zero-padded frame, never a panic.
use std::collections::VecDeque;

use crate::g711::Law;

/// Samples in one frame: 20 ms at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// The RMS a frame must reach to be loud: about −41 dBFS. Above the
/// idle noise of a phone's microphone and of G.711's quantisation (−50
/// dBFS and below; [`crate::tone::SILENCE_RMS`] is 100), below quiet
/// speech (about −30 dBFS, an RMS near 1000).
pub const TALK_THRESHOLD_RMS: i64 = 300;

/// Loud frames in a row that start talking: 60 ms, so that a click, a
/// cough or a burst of line noise shorter than that is not speech.
pub const TALK_START_FRAMES: u32 = 3;

/// Quiet frames in a row that stop talking: 500 ms, longer than the
/// pauses between words and phrases (100-300 ms), so that one sentence is
/// one talk span.
pub const TALK_STOP_FRAMES: u32 = 25;

/// A participant of one [`Mixer`]; not reused after removal (the index is
/// reused, with another generation), so a stale id never reaches a new
/// participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId {
    index: u32,
    generation: u32,
}

impl ParticipantId {
    /// A number for logs and events: unique among the room's participants
    /// at any time.
    pub fn index(self) -> u32 {
        self.index
    }
}

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}.{}", self.index, self.generation)
    }
}

/// A talk detection transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Talk {
    Started(ParticipantId),
    Stopped(ParticipantId),
}

/// Which payload a participant is sent after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Its own: the mix minus its frame, or plus its private frame.
    Own,
    /// The full mix in its law, shared.
    Shared,
}

#[derive(Debug)]
struct Participant {
    generation: u32,
    law: Law,
    heard: bool,
    /// Hears the room (`false`: only its private frames, e.g. a caller
    /// still entering a PIN or waiting for a moderator).
    hears: bool,
    frame: [i16; FRAME_SAMPLES],
    has_frame: bool,
    /// Whether `frame` went into this tick's sum.
    contributed: bool,
    private: [i16; FRAME_SAMPLES],
    has_private: bool,
    payload: [u8; FRAME_SAMPLES],
    output: Output,
    talk: TalkDetector,
}

/// Energy over a threshold with hangover: see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TalkDetector {
    talking: bool,
    /// Loud frames in a row while not talking; quiet ones while talking.
    run: u32,
}

impl TalkDetector {
    /// Takes one frame's loudness; says whether talking changed.
    fn on_frame(&mut self, loud: bool) -> bool {
        if loud != self.talking {
            self.run += 1;
            let needed = if self.talking {
                TALK_STOP_FRAMES
            } else {
                TALK_START_FRAMES
            };
            if self.run >= needed {
                self.talking = !self.talking;
                self.run = 0;
                return true;
            }
        } else {
            self.run = 0;
        }
        false
    }
}

fn is_loud(frame: &[i16; FRAME_SAMPLES]) -> bool {
    let energy: i64 = frame.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
    energy >= TALK_THRESHOLD_RMS * TALK_THRESHOLD_RMS * FRAME_SAMPLES as i64
}

fn saturate(sum: i32) -> i16 {
    sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

fn law_index(law: Law) -> usize {
    match law {
        Law::Mu => 0,
        Law::A => 1,
    }
}

/// Copies `samples` into a frame, zero-padding a short one and cutting a
/// long one.
fn fill(frame: &mut [i16; FRAME_SAMPLES], samples: &[i16]) {
    let taken = samples.len().min(FRAME_SAMPLES);
    frame[..taken].copy_from_slice(&samples[..taken]);
    frame[taken..].fill(0);
}

/// A room's mixer: see the module documentation.
#[derive(Debug)]
pub struct Mixer {
    slots: Vec<Option<Participant>>,
    /// Indices of `slots` that are free, reused last-freed first.
    free: Vec<u32>,
    /// The generation the next participant in each slot gets.
    generations: Vec<u32>,
    len: usize,
    sum: [i32; FRAME_SAMPLES],
    room: [i16; FRAME_SAMPLES],
    has_room: bool,
    mix: [i16; FRAME_SAMPLES],
    /// The full mix encoded per law (µ-law, A-law).
    shared: [[u8; FRAME_SAMPLES]; 2],
    talk_events: VecDeque<Talk>,
    /// Frames the mixer ran.
    ticks: u64,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new()
    }
}

impl Mixer {
    /// An empty room.
    pub fn new() -> Mixer {
        Mixer {
            slots: Vec::new(),
            free: Vec::new(),
            generations: Vec::new(),
            len: 0,
            sum: [0; FRAME_SAMPLES],
            room: [0; FRAME_SAMPLES],
            has_room: false,
            mix: [0; FRAME_SAMPLES],
            shared: [
                [Law::Mu.silence(); FRAME_SAMPLES],
                [Law::A.silence(); FRAME_SAMPLES],
            ],
            talk_events: VecDeque::new(),
            ticks: 0,
        }
    }

    /// Adds a participant sent `law`, heard by the others, not talking.
    pub fn add(&mut self, law: Law) -> ParticipantId {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slot = index as usize;
        let generation = self.generations.get(slot).copied().unwrap_or(0);
        if let Some(next) = self.generations.get_mut(slot) {
            *next = generation.wrapping_add(1);
        }
        if let Some(place) = self.slots.get_mut(slot) {
            *place = Some(Participant {
                generation,
                law,
                heard: true,
                hears: true,
                frame: [0; FRAME_SAMPLES],
                has_frame: false,
                contributed: false,
                private: [0; FRAME_SAMPLES],
                has_private: false,
                payload: [law.silence(); FRAME_SAMPLES],
                output: Output::Shared,
                talk: TalkDetector::default(),
            });
        }
        self.len += 1;
        // Room for a start and a stop of everyone between two reads, so
        // that a tick never grows the queue.
        let wanted = 2 * self.len;
        if self.talk_events.capacity() < wanted {
            self.talk_events
                .reserve(wanted.saturating_sub(self.talk_events.len()));
        }
        ParticipantId { index, generation }
    }

    fn get(&self, id: ParticipantId) -> Option<&Participant> {
        self.slots
            .get(id.index as usize)?
            .as_ref()
            .filter(|p| p.generation == id.generation)
    }

    fn get_mut(&mut self, id: ParticipantId) -> Option<&mut Participant> {
        self.slots
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|p| p.generation == id.generation)
    }

    /// Removes a participant; `false` if it was not in the room. A talking
    /// participant's [`Talk::Stopped`] is queued, so that every start has
    /// its stop.
    pub fn remove(&mut self, id: ParticipantId) -> bool {
        let Some(participant) = self.get(id) else {
            return false;
        };
        if participant.talk.talking {
            self.talk_events.push_back(Talk::Stopped(id));
        }
        if let Some(slot) = self.slots.get_mut(id.index as usize) {
            *slot = None;
        }
        self.free.push(id.index);
        self.len -= 1;
        true
    }

    /// Whether `id` is in the room.
    pub fn contains(&self, id: ParticipantId) -> bool {
        self.get(id).is_some()
    }

    /// Participants in the room.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The participants, in slot order.
    pub fn participants(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            slot.as_ref().map(|p| ParticipantId {
                index: index as u32,
                generation: p.generation,
            })
        })
    }

    /// Mute (`false`) or unmute (`true`): a muted participant is heard by
    /// no one and is not in the recording; it still hears the room, and
    /// its talk detection still runs. `false` if not in the room.
    pub fn set_heard(&mut self, id: ParticipantId, heard: bool) -> bool {
        self.get_mut(id).map(|p| p.heard = heard).is_some()
    }

    /// Whether `id` hears the room (`true`, the default) or only what is
    /// pushed for it alone ([`Mixer::push_private`]): a caller in the room's
    /// lobby (entering a PIN, waiting for a moderator) has its media
    /// session in the room without hearing the meeting. `false` if not in
    /// the room.
    pub fn set_hears(&mut self, id: ParticipantId, hears: bool) -> bool {
        self.get_mut(id).map(|p| p.hears = hears).is_some()
    }

    /// Whether the others hear `id` (`None` if not in the room).
    pub fn is_heard(&self, id: ParticipantId) -> Option<bool> {
        self.get(id).map(|p| p.heard)
    }

    /// Whether talk detection has `id` talking.
    pub fn is_talking(&self, id: ParticipantId) -> Option<bool> {
        self.get(id).map(|p| p.talk.talking)
    }

    /// The law `id` is sent in.
    pub fn law(&self, id: ParticipantId) -> Option<Law> {
        self.get(id).map(|p| p.law)
    }

    /// `id`'s frame for the next tick, as decoded samples (a short frame
    /// is padded with silence, a long one cut at [`FRAME_SAMPLES`]); a
    /// second frame before the tick replaces the first. `false` if not in
    /// the room.
    pub fn push_frame(&mut self, id: ParticipantId, samples: &[i16]) -> bool {
        let Some(participant) = self.get_mut(id) else {
            return false;
        };
        fill(&mut participant.frame, samples);
        participant.has_frame = true;
        true
    }

    /// `id`'s frame for the next tick as a G.711 payload in `law` (what it
    /// sends may differ from what it is sent only if the caller says so),
    /// decoded here.
    pub fn push_payload(&mut self, id: ParticipantId, law: Law, payload: &[u8]) -> bool {
        let Some(participant) = self.get_mut(id) else {
            return false;
        };
        let taken = payload.len().min(FRAME_SAMPLES);
        for (sample, &code) in participant.frame.iter_mut().zip(&payload[..taken]) {
            *sample = law.decode(code);
        }
        participant.frame[taken..].fill(0);
        participant.has_frame = true;
        true
    }

    /// Audio only `id` hears at the next tick, added to its mix (a prompt
    /// or a tone for it alone); not in the recording.
    pub fn push_private(&mut self, id: ParticipantId, samples: &[i16]) -> bool {
        let Some(participant) = self.get_mut(id) else {
            return false;
        };
        fill(&mut participant.private, samples);
        participant.has_private = true;
        true
    }

    /// Audio everyone hears at the next tick (a join or leave tone),
    /// recording included.
    pub fn push_room(&mut self, samples: &[i16]) {
        fill(&mut self.room, samples);
        self.has_room = true;
    }

    /// Mixes one frame: every participant's output, the full mix, the talk
    /// transitions; the pushed frames are consumed.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.sum = [0; FRAME_SAMPLES];
        if std::mem::take(&mut self.has_room) {
            for (sum, &sample) in self.sum.iter_mut().zip(&self.room) {
                *sum += i32::from(sample);
            }
        }
        let mut needs_shared = [false; 2];
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(participant) = slot.as_mut() else {
                continue;
            };
            let loud = participant.has_frame && is_loud(&participant.frame);
            if participant.talk.on_frame(loud) {
                let id = ParticipantId {
                    index: index as u32,
                    generation: participant.generation,
                };
                self.talk_events.push_back(if participant.talk.talking {
                    Talk::Started(id)
                } else {
                    Talk::Stopped(id)
                });
            }
            participant.contributed = participant.has_frame && participant.heard;
            if participant.contributed {
                for (sum, &sample) in self.sum.iter_mut().zip(&participant.frame) {
                    *sum += i32::from(sample);
                }
            }
            participant.has_frame = false;
            participant.output =
                if participant.contributed || participant.has_private || !participant.hears {
                    Output::Own
                } else {
                    needs_shared[law_index(participant.law)] = true;
                    Output::Shared
                };
        }
        for (mixed, &sum) in self.mix.iter_mut().zip(&self.sum) {
            *mixed = saturate(sum);
        }
        for law in [Law::Mu, Law::A] {
            if needs_shared[law_index(law)] {
                let shared = &mut self.shared[law_index(law)];
                for (code, &sample) in shared.iter_mut().zip(&self.mix) {
                    *code = law.encode(sample);
                }
            }
        }
        let sum = &self.sum;
        for participant in self.slots.iter_mut().flatten() {
            if participant.output == Output::Shared {
                continue;
            }
            let contributed = participant.contributed;
            let hears = participant.hears;
            let has_private = std::mem::take(&mut participant.has_private);
            let law = participant.law;
            for (n, code) in participant.payload.iter_mut().enumerate() {
                let mut sample = if hears { sum[n] } else { 0 };
                if contributed && hears {
                    sample -= i32::from(participant.frame[n]);
                }
                if has_private {
                    sample += i32::from(participant.private[n]);
                }
                *code = law.encode(saturate(sample));
            }
        }
    }

    /// What `id` is sent for the last tick: [`FRAME_SAMPLES`] codes in its
    /// law (silence before the first tick). `None` if not in the room.
    pub fn output(&self, id: ParticipantId) -> Option<&[u8]> {
        let participant = self.get(id)?;
        Some(match participant.output {
            Output::Own => &participant.payload,
            Output::Shared => &self.shared[law_index(participant.law)],
        })
    }

    /// The last tick's full mix: every heard participant and the room's
    /// own audio, saturated; what the room's recording holds.
    pub fn mix(&self) -> &[i16] {
        &self.mix
    }

    /// The next talk transition, oldest first.
    pub fn poll_talk(&mut self) -> Option<Talk> {
        self.talk_events.pop_front()
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_removed_participants_are_not_reused() {
        let mut mixer = Mixer::new();
        let a = mixer.add(Law::Mu);
        assert!(mixer.remove(a));
        let b = mixer.add(Law::A);
        assert_eq!(a.index(), b.index());
        assert_ne!(a, b);
        assert!(!mixer.push_frame(a, &[1; 160]));
        assert!(!mixer.remove(a));
        assert_eq!(mixer.law(b), Some(Law::A));
        assert_eq!(mixer.len(), 1);
    }

    #[test]
    fn the_detector_needs_three_loud_frames_and_twenty_five_quiet_ones() {
        let mut detector = TalkDetector::default();
        assert!(!detector.on_frame(true));
        assert!(!detector.on_frame(true));
        // A quiet frame resets the run.
        assert!(!detector.on_frame(false));
        assert!(!detector.on_frame(true));
        assert!(!detector.on_frame(true));
        assert!(detector.on_frame(true));
        assert!(detector.talking);
        for _ in 0..24 {
            assert!(!detector.on_frame(false));
        }
        assert!(detector.on_frame(false));
        assert!(!detector.talking);
    }

    #[test]
    fn loudness_is_the_rms_against_the_threshold() {
        assert!(is_loud(&[300; FRAME_SAMPLES]));
        assert!(!is_loud(&[299; FRAME_SAMPLES]));
        assert!(is_loud(&[-300; FRAME_SAMPLES]));
    }
}
