//! The canonical presence of an endpoint. Every wire format is rendered
//! from this one state, so a watcher sees the same thing whichever dialect
//! its client speaks.

/// Availability on the Microsoft numeric scale, the finest scale any of our
/// dialects has; PIDF renderings are derived from its band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Availability(pub u32);

/// The ranges of the availability scale that mean the same thing to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Band {
    /// 0–2999.
    Unknown,
    /// 3000–4499.
    Available,
    /// 4500–5999.
    AvailableIdle,
    /// 6000–7499.
    Busy,
    /// 7500–8999.
    BusyIdle,
    /// 9000–11999.
    DoNotDisturb,
    /// 12000–14999.
    BeRightBack,
    /// 15000–17999.
    Away,
    /// 18000 and above.
    Offline,
}

impl Band {
    /// The name admins and the console use.
    pub fn name(self) -> &'static str {
        match self {
            Band::Unknown => "unknown",
            Band::Available => "online",
            Band::AvailableIdle => "online-idle",
            Band::Busy => "busy",
            Band::BusyIdle => "busy-idle",
            Band::DoNotDisturb => "do-not-disturb",
            Band::BeRightBack => "be-right-back",
            Band::Away => "away",
            Band::Offline => "offline",
        }
    }
}

impl Availability {
    /// Online, the state of a healthy application endpoint.
    pub const ONLINE: Availability = Availability(3500);
    /// Busy.
    pub const BUSY: Availability = Availability(6500);
    /// Do not disturb.
    pub const DO_NOT_DISTURB: Availability = Availability(9500);
    /// Be right back.
    pub const BE_RIGHT_BACK: Availability = Availability(12500);
    /// Away.
    pub const AWAY: Availability = Availability(15500);
    /// Offline.
    pub const OFFLINE: Availability = Availability(18500);

    /// The band this value falls in.
    pub fn band(self) -> Band {
        match self.0 {
            0..=2999 => Band::Unknown,
            3000..=4499 => Band::Available,
            4500..=5999 => Band::AvailableIdle,
            6000..=7499 => Band::Busy,
            7500..=8999 => Band::BusyIdle,
            9000..=11999 => Band::DoNotDisturb,
            12000..=14999 => Band::BeRightBack,
            15000..=17999 => Band::Away,
            _ => Band::Offline,
        }
    }

    /// Whether PIDF renders this as `open`.
    pub fn is_open(self) -> bool {
        !matches!(self.band(), Band::Unknown | Band::Offline)
    }

    /// Parses the names admins write in configuration (`online`, `away`, …)
    /// or a number on the scale.
    pub fn from_name(name: &str) -> Option<Availability> {
        Some(match name.to_ascii_lowercase().as_str() {
            "online" | "available" => Availability::ONLINE,
            "busy" => Availability::BUSY,
            "dnd" | "do-not-disturb" => Availability::DO_NOT_DISTURB,
            "brb" | "be-right-back" => Availability::BE_RIGHT_BACK,
            "away" => Availability::AWAY,
            "offline" => Availability::OFFLINE,
            other => Availability(other.parse().ok()?),
        })
    }
}

/// What an endpoint can do, advertised in `services` and used by clients to
/// decide whether to offer IM and calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Instant messages.
    pub text: bool,
    /// Audio calls.
    pub voice: bool,
}

/// The changing part of an endpoint's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceState {
    /// Where on the scale.
    pub availability: Availability,
    /// An RPID activity token (`on-the-phone`, `meeting`, …) refining the band.
    pub activity: Option<String>,
    /// Free text shown under the name.
    pub note: Option<String>,
}

/// A field of a presence state longer than the node allows: refused where
/// it enters (PUBLISH, SERVICE, the API, the configuration), because every
/// NOTIFY about the endpoint carries it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {field} is {len} bytes; at most {limit} are allowed ([presence] max_note_bytes)")]
pub struct TooLong {
    /// `note` or `activity`.
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
    /// The bound.
    pub limit: usize,
}

/// Checks one free-text field against the bound.
pub fn check_length(field: &'static str, text: Option<&str>, limit: usize) -> Result<(), TooLong> {
    match text.map(str::len) {
        Some(len) if len > limit => Err(TooLong { field, len, limit }),
        _ => Ok(()),
    }
}

impl PresenceState {
    /// Whether the note and activity fit within `limit` bytes each.
    pub fn check_lengths(&self, limit: usize) -> Result<(), TooLong> {
        check_length("note", self.note.as_deref(), limit)?;
        check_length("activity", self.activity.as_deref(), limit)
    }

    /// A state with only an availability.
    pub fn new(availability: Availability) -> PresenceState {
        PresenceState {
            availability,
            activity: None,
            note: None,
        }
    }

    /// The RPID activity to render: the explicit one, else the band's.
    pub fn rpid_activity(&self) -> Option<&str> {
        if let Some(activity) = &self.activity {
            return Some(activity);
        }
        match self.availability.band() {
            Band::Busy | Band::BusyIdle | Band::DoNotDisturb => Some("busy"),
            Band::BeRightBack | Band::Away => Some("away"),
            _ => None,
        }
    }

    /// Whether RPID should say the user input is idle.
    pub fn is_idle(&self) -> bool {
        matches!(
            self.availability.band(),
            Band::AvailableIdle | Band::BusyIdle
        )
    }
}

/// The fixed part of an endpoint's presence: who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The endpoint's SIP URI, as watchers address it.
    pub uri: String,
    /// The name clients show.
    pub display_name: String,
    /// What the endpoint can do.
    pub capabilities: Capabilities,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_the_ms_scale() {
        assert_eq!(Availability(2999).band(), Band::Unknown);
        assert_eq!(Availability(3000).band(), Band::Available);
        assert_eq!(Availability(4500).band(), Band::AvailableIdle);
        assert_eq!(Availability(9000).band(), Band::DoNotDisturb);
        assert_eq!(Availability(17999).band(), Band::Away);
        assert_eq!(Availability(18000).band(), Band::Offline);
        assert!(Availability::ONLINE.is_open());
        assert!(!Availability::OFFLINE.is_open());
        assert!(!Availability(0).is_open());
        assert_eq!(Availability::from_name("Away"), Some(Availability::AWAY));
        assert_eq!(Availability::from_name("4000"), Some(Availability(4000)));
        assert_eq!(Availability::from_name("sleepy"), None);
    }

    #[test]
    fn activity_comes_from_the_band_unless_given() {
        let mut s = PresenceState::new(Availability::BUSY);
        assert_eq!(s.rpid_activity(), Some("busy"));
        s.activity = Some("on-the-phone".into());
        assert_eq!(s.rpid_activity(), Some("on-the-phone"));
        assert_eq!(
            PresenceState::new(Availability::ONLINE).rpid_activity(),
            None
        );
        assert!(PresenceState::new(Availability(5000)).is_idle());
    }
}
