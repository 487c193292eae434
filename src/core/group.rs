//! Group membership and permissions.
//!
//! A group's state is owned by the shard of its conversation, which decides
//! every change here before writing it, so membership and the messages of
//! the group are ordered with respect to each other: a member removed
//! before message N never receives N, a member who joined before N does.

use super::{Decision, ErrorCode, Reject};
use crate::model::Role;
use crate::model::{GroupId, UserId};
use ahash::AHashMap;

/// The answer to a join of a private group without an invitation: the
/// request is recorded (or was already), an owner or admin decides.
pub const PENDING: Reject = Reject(
    ErrorCode::PendingApproval,
    "this group is private: your request to join awaits an owner's or admin's approval",
);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    pub id: GroupId,
    pub name: String,
    pub owner: UserId,
    pub members: AHashMap<UserId, Role>,
    /// Joining needs an invitation or an approved request.
    pub private: bool,
    /// Users invited (true) or asking to join (false).
    pub pending: AHashMap<UserId, bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupAction {
    Join,
    Leave,
    Remove(UserId),
    SetAdmin(UserId, bool),
    Dissolve,
    /// Owner/admin: let the user join; a user who asked joins at once.
    Invite(UserId),
    /// Owner/admin: accept (true) or reject a user's request to join.
    Respond(UserId, bool),
}

/// A decided change, to be written to the store and then applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChange {
    Joined(UserId),
    Left(UserId),
    Removed(UserId),
    RoleSet(UserId, Role),
    Dissolved,
    /// An invitation was recorded for the user.
    Invited(UserId),
    /// The user asked to join a private group.
    Requested(UserId),
    /// The user's request was rejected (and forgotten).
    Rejected(UserId),
}

impl GroupState {
    pub fn role(&self, user: UserId) -> Option<Role> {
        self.members.get(&user).copied()
    }

    pub fn require_member(&self, user: UserId) -> Decision<Role> {
        self.role(user).ok_or(Reject(
            ErrorCode::NotMember,
            "you are not a member of this group",
        ))
    }

    /// Owners and admins decide who enters.
    fn require_admin(&self, actor: UserId) -> Decision<()> {
        if self.require_member(actor)? >= Role::Admin {
            Ok(())
        } else {
            Err(Reject(
                ErrorCode::NotAllowed,
                "only the owner or an admin may do that",
            ))
        }
    }

    /// Owners and admins: the ones told about join requests.
    pub fn admins(&self) -> Vec<UserId> {
        self.members
            .iter()
            .filter(|(_, r)| **r >= Role::Admin)
            .map(|(u, _)| *u)
            .collect()
    }

    pub fn decide(&self, actor: UserId, action: GroupAction) -> Decision<GroupChange> {
        match action {
            GroupAction::Join => {
                if self.members.contains_key(&actor) {
                    Err(Reject(ErrorCode::AlreadyMember, "already a member"))
                } else if !self.private || self.pending.get(&actor) == Some(&true) {
                    Ok(GroupChange::Joined(actor))
                } else if self.pending.get(&actor) == Some(&false) {
                    Err(PENDING)
                } else {
                    Ok(GroupChange::Requested(actor))
                }
            }
            GroupAction::Invite(target) => {
                self.require_admin(actor)?;
                if self.members.contains_key(&target) {
                    Err(Reject(ErrorCode::AlreadyMember, "already a member"))
                } else if self.pending.get(&target) == Some(&false) {
                    // They asked already: the invitation lets them in.
                    Ok(GroupChange::Joined(target))
                } else {
                    Ok(GroupChange::Invited(target))
                }
            }
            GroupAction::Respond(target, accept) => {
                self.require_admin(actor)?;
                if self.members.contains_key(&target) {
                    Err(Reject(ErrorCode::AlreadyMember, "already a member"))
                } else if self.pending.get(&target) != Some(&false) {
                    Err(Reject(
                        ErrorCode::NoSuchRequest,
                        "that user has not asked to join",
                    ))
                } else if accept {
                    Ok(GroupChange::Joined(target))
                } else {
                    Ok(GroupChange::Rejected(target))
                }
            }
            GroupAction::Leave => {
                let role = self.require_member(actor)?;
                if role == Role::Owner {
                    Err(Reject(
                        ErrorCode::NotAllowed,
                        "the owner cannot leave; dissolve the group instead",
                    ))
                } else {
                    Ok(GroupChange::Left(actor))
                }
            }
            GroupAction::Remove(target) => {
                let mine = self.require_member(actor)?;
                if target == actor {
                    return Err(Reject(ErrorCode::NotAllowed, "use leave to leave a group"));
                }
                let theirs = self
                    .role(target)
                    .ok_or(Reject(ErrorCode::NotMember, "that user is not a member"))?;
                if mine > theirs && mine >= Role::Admin {
                    Ok(GroupChange::Removed(target))
                } else {
                    Err(Reject(
                        ErrorCode::NotAllowed,
                        "only the owner, or an admin for plain members, may remove",
                    ))
                }
            }
            GroupAction::SetAdmin(target, admin) => {
                if self.require_member(actor)? != Role::Owner {
                    return Err(Reject(
                        ErrorCode::NotAllowed,
                        "only the owner may change roles",
                    ));
                }
                match self.role(target) {
                    None => Err(Reject(ErrorCode::NotMember, "that user is not a member")),
                    Some(Role::Owner) => {
                        Err(Reject(ErrorCode::NotAllowed, "the owner's role is fixed"))
                    }
                    Some(_) => Ok(GroupChange::RoleSet(
                        target,
                        if admin { Role::Admin } else { Role::Member },
                    )),
                }
            }
            GroupAction::Dissolve => {
                if self.require_member(actor)? != Role::Owner {
                    Err(Reject(
                        ErrorCode::NotAllowed,
                        "only the owner may dissolve the group",
                    ))
                } else {
                    Ok(GroupChange::Dissolved)
                }
            }
        }
    }

    /// Applies a change the store has accepted. Returns false for `Dissolved`
    /// (the caller forgets the group).
    pub fn apply(&mut self, change: GroupChange) -> bool {
        match change {
            GroupChange::Joined(u) => {
                self.members.insert(u, Role::Member);
                self.pending.remove(&u);
            }
            GroupChange::Invited(u) => {
                self.pending.insert(u, true);
            }
            GroupChange::Requested(u) => {
                self.pending.insert(u, false);
            }
            GroupChange::Rejected(u) => {
                self.pending.remove(&u);
            }
            GroupChange::Left(u) | GroupChange::Removed(u) => {
                self.members.remove(&u);
            }
            GroupChange::RoleSet(u, r) => {
                self.members.insert(u, r);
            }
            GroupChange::Dissolved => {
                self.members.clear();
                self.pending.clear();
                return false;
            }
        }
        true
    }

    /// Everyone who hears about `change`: the members after it, plus the
    /// one who left or was removed (so their client updates too). An
    /// invitation or a rejection is heard by its target and the owner and
    /// admins; a join request by the owner and admins only.
    pub fn audience(&self, change: GroupChange) -> Vec<UserId> {
        let mut v: Vec<UserId> = match change {
            GroupChange::Invited(u) | GroupChange::Rejected(u) => {
                let mut v = self.admins();
                v.push(u);
                return v;
            }
            GroupChange::Requested(_) => return self.admins(),
            _ => self.members.keys().copied().collect(),
        };
        if let GroupChange::Left(u) | GroupChange::Removed(u) = change
            && !v.contains(&u)
        {
            v.push(u);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupState {
        let mut members = AHashMap::new();
        members.insert(1, Role::Owner);
        members.insert(2, Role::Admin);
        members.insert(3, Role::Member);
        members.insert(4, Role::Member);
        GroupState {
            id: 9,
            name: "g".into(),
            owner: 1,
            members,
            ..Default::default()
        }
    }

    #[test]
    fn private_groups_need_an_invitation_or_an_approval() {
        let mut g = group();
        g.private = true;
        // Asking records a request; asking again is answered the same.
        let c = g.decide(5, GroupAction::Join).unwrap();
        assert_eq!(c, GroupChange::Requested(5));
        let mut audience = g.audience(c);
        audience.sort_unstable();
        assert_eq!(audience, vec![1, 2], "owner and admins");
        g.apply(c);
        assert_eq!(
            g.decide(5, GroupAction::Join).unwrap_err().0,
            ErrorCode::PendingApproval
        );
        // Plain members decide nothing.
        assert_eq!(
            g.decide(3, GroupAction::Respond(5, true)).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        assert_eq!(
            g.decide(3, GroupAction::Invite(6)).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        assert_eq!(
            g.decide(2, GroupAction::Respond(6, true)).unwrap_err().0,
            ErrorCode::NoSuchRequest
        );
        assert_eq!(
            g.decide(2, GroupAction::Respond(5, false)),
            Ok(GroupChange::Rejected(5))
        );
        let c = g.decide(2, GroupAction::Respond(5, true)).unwrap();
        assert_eq!(c, GroupChange::Joined(5));
        g.apply(c);
        assert!(g.pending.is_empty());
        // An invitation lets the invitee in; inviting one who asked admits them.
        let c = g.decide(1, GroupAction::Invite(6)).unwrap();
        assert_eq!(c, GroupChange::Invited(6));
        g.apply(c);
        assert_eq!(g.decide(6, GroupAction::Join), Ok(GroupChange::Joined(6)));
        g.apply(GroupChange::Requested(7));
        assert_eq!(
            g.decide(2, GroupAction::Invite(7)),
            Ok(GroupChange::Joined(7))
        );
        assert_eq!(
            g.decide(1, GroupAction::Invite(3)).unwrap_err().0,
            ErrorCode::AlreadyMember
        );
    }

    #[test]
    fn join_leave() {
        let mut g = group();
        assert_eq!(g.decide(5, GroupAction::Join), Ok(GroupChange::Joined(5)));
        assert_eq!(
            g.decide(3, GroupAction::Join).unwrap_err().0,
            ErrorCode::AlreadyMember
        );
        assert_eq!(
            g.decide(1, GroupAction::Leave).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        assert_eq!(
            g.decide(5, GroupAction::Leave).unwrap_err().0,
            ErrorCode::NotMember
        );
        let c = g.decide(3, GroupAction::Leave).unwrap();
        assert!(g.apply(c));
        assert_eq!(g.role(3), None);
        assert!(g.audience(c).contains(&3));
    }

    #[test]
    fn removal_follows_rank() {
        let g = group();
        assert_eq!(
            g.decide(1, GroupAction::Remove(2)),
            Ok(GroupChange::Removed(2))
        );
        assert_eq!(
            g.decide(2, GroupAction::Remove(3)),
            Ok(GroupChange::Removed(3))
        );
        assert_eq!(
            g.decide(2, GroupAction::Remove(1)).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        assert_eq!(
            g.decide(3, GroupAction::Remove(4)).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        assert_eq!(
            g.decide(1, GroupAction::Remove(7)).unwrap_err().0,
            ErrorCode::NotMember
        );
        assert_eq!(
            g.decide(7, GroupAction::Remove(3)).unwrap_err().0,
            ErrorCode::NotMember
        );
    }

    #[test]
    fn roles_and_dissolve_are_owner_only() {
        let mut g = group();
        assert_eq!(
            g.decide(2, GroupAction::SetAdmin(3, true)).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        let c = g.decide(1, GroupAction::SetAdmin(3, true)).unwrap();
        g.apply(c);
        assert_eq!(g.role(3), Some(Role::Admin));
        assert_eq!(
            g.decide(2, GroupAction::Dissolve).unwrap_err().0,
            ErrorCode::NotAllowed
        );
        let c = g.decide(1, GroupAction::Dissolve).unwrap();
        assert!(!g.apply(c));
    }
}
